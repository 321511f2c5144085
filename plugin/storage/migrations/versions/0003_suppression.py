"""Feedback suppression: the hashed subject of each issued card, and active suppressions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "card_subjects",
        sa.Column("card_uuid", sa.String(64), primary_key=True),
        sa.Column("service_id", sa.String(100), nullable=False),
        sa.Column("finding", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(100), nullable=False),
        sa.Column("patient_hash", sa.String(64), nullable=False),
        sa.Column("encounter_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(20), nullable=True),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_card_subjects_issued_at", "card_subjects", ["issued_at"])
    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("patient_hash", sa.String(64), nullable=False),
        sa.Column("encounter_hash", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(100), nullable=False),
        sa.Column("status", sa.String(20), nullable=True),
        sa.Column("reason", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint(
            "patient_hash", "encounter_hash", "kind", name="uq_suppressions_subject"
        ),
    )
    op.create_index("ix_suppressions_expires_at", "suppressions", ["expires_at"])


def downgrade() -> None:
    op.drop_table("suppressions")
    op.drop_table("card_subjects")
