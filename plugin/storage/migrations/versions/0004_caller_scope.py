"""Scope issued cards and suppressions to the verified caller; one feedback outcome per card.

An issued card records the keyed hash of the caller it was issued to, and a card subject the
override reasons its card offered. Patient and encounter hashes now cover the caller and the
FHIR server too, so records made before this revision can no longer be matched: they are
deleted (the cards they suppressed show again, the safe direction). Feedback keeps one row per
card: duplicates from before are reduced to the first one received.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("issued_cards", sa.Column("caller_hash", sa.String(64), nullable=True))
    op.add_column("card_subjects", sa.Column("caller_hash", sa.String(64), nullable=True))
    op.add_column("card_subjects", sa.Column("reasons", sa.String(255), nullable=True))
    op.execute("DELETE FROM suppressions")
    op.execute("DELETE FROM card_subjects")
    op.execute(
        "DELETE FROM feedback WHERE id NOT IN "
        "(SELECT MIN(id) FROM feedback GROUP BY card_uuid, service_id)"
    )
    op.create_index("uq_feedback_card", "feedback", ["card_uuid", "service_id"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_feedback_card", table_name="feedback")
    with op.batch_alter_table("card_subjects") as batch:
        batch.drop_column("reasons")
        batch.drop_column("caller_hash")
    with op.batch_alter_table("issued_cards") as batch:
        batch.drop_column("caller_hash")
