"""Issued cards are no longer rows: a card's uuid carries its record, and cards shown are counted.

A card's uuid is now an encrypted token with what feedback needs (plugin/storage/token.py), so a
call writes nothing; the cards shown are counted per day, service, finding and kind in
``issued_counts``, written behind. ``issued_cards`` is summed into those counts and each stored
feedback keeps the finding and kind it was given on, then ``issued_cards`` and
``card_subjects`` are dropped. Active suppressions are kept (their hashes are unchanged). Cards
issued before this revision are unknown to feedback from now on: nothing is stored or
suppressed for them (the safe direction; such feedback comes within minutes of the call).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "issued_counts",
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("service_id", sa.String(100), primary_key=True),
        sa.Column("finding", sa.String(100), primary_key=True),
        sa.Column("kind", sa.String(100), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
    )
    # Days are UTC, as the service writes them.
    postgresql = op.get_bind().dialect.name == "postgresql"
    day = "CAST(issued_at AT TIME ZONE 'UTC' AS DATE)" if postgresql else "date(issued_at)"
    op.execute(
        "INSERT INTO issued_counts (day, service_id, finding, kind, count) "  # noqa: S608 - constants
        f"SELECT {day}, service_id, finding, COALESCE(topic, finding), COUNT(*) "
        f"FROM issued_cards GROUP BY {day}, service_id, finding, COALESCE(topic, finding)"
    )
    op.add_column("feedback", sa.Column("finding", sa.String(100), nullable=True))
    op.add_column("feedback", sa.Column("kind", sa.String(100), nullable=True))
    issued = (
        "FROM issued_cards i WHERE i.card_uuid = feedback.card_uuid "
        "AND i.service_id = feedback.service_id"
    )
    op.execute(
        f"UPDATE feedback SET finding = (SELECT i.finding {issued}), "  # noqa: S608 - constants
        f"kind = (SELECT COALESCE(i.topic, i.finding) {issued})"
    )
    op.drop_table("card_subjects")
    op.drop_table("issued_cards")


def downgrade() -> None:
    # The tables come back empty: what the tokens carried was never written.
    op.create_table(
        "issued_cards",
        sa.Column("card_uuid", sa.String(64), primary_key=True),
        sa.Column("service_id", sa.String(100), nullable=False),
        sa.Column("finding", sa.String(100), nullable=False),
        sa.Column("topic", sa.String(100), nullable=True),
        sa.Column("hook_instance", sa.String(100), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("caller_hash", sa.String(64), nullable=True),
    )
    op.create_index("ix_issued_cards_issued_at", "issued_cards", ["issued_at"])
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
        sa.Column("caller_hash", sa.String(64), nullable=True),
        sa.Column("reasons", sa.String(255), nullable=True),
    )
    op.create_index("ix_card_subjects_issued_at", "card_subjects", ["issued_at"])
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("kind")
        batch.drop_column("finding")
    op.drop_table("issued_counts")
