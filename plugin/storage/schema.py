"""The service's one schema: every table it keeps, on one ``MetaData``.

The Alembic environment (``migrations/env.py``) targets this ``metadata``, and a test compares
it with what the migrations build, so a model and its migration cannot drift apart. No table
holds patient data in the clear: patients and encounters appear only as keyed hashes
(``suppression``), SMART sessions only encrypted under the browser's cookie (``plugin.smart``).
Issued cards are not rows: a card's uuid carries its record (``token``), and only their counts
per day are kept (``issued``).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

metadata = sa.MetaData()


def insert_into(conn: sa.Connection, table: sa.Table) -> Any:
    """The dialect's own INSERT into ``table`` (both offer ``ON CONFLICT``)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # SHA-256 (hex) of the card's uuid: the uuid is a token that carries the card's keyed
    # patient hash (plugin/storage/token.py), which is not kept beyond the token's retention.
    sa.Column("card_uuid", sa.String(64), nullable=False, index=True),
    sa.Column("service_id", sa.String(100), nullable=False),
    # The finding and card kind (source.topic code) the card was issued for, from its token.
    sa.Column("finding", sa.String(100), nullable=True),
    sa.Column("kind", sa.String(100), nullable=True),
    sa.Column("known_card", sa.Boolean, nullable=False),
    sa.Column("outcome", sa.String(20), nullable=False),
    sa.Column("accepted_suggestions", sa.Text, nullable=True),
    sa.Column("override_system", sa.String(255), nullable=True),
    sa.Column("override_code", sa.String(100), nullable=True),
    sa.Column("override_display", sa.String(255), nullable=True),
    sa.Column("user_comment", sa.Text, nullable=True),
    sa.Column("outcome_time", sa.String(40), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, index=True),
    # One outcome per card: a retried post is idempotent.
    sa.Index("uq_feedback_card", "card_uuid", "service_id", unique=True),
)

jwt_replay = sa.Table(
    "jwt_replay",
    metadata,
    sa.Column("key_hash", sa.String(64), primary_key=True),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
)

# Suppression (plugin/storage/suppression.py): which card kind is hidden for which patient.
suppressions = sa.Table(
    "suppressions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("patient_hash", sa.String(64), nullable=False),
    sa.Column("encounter_hash", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(100), nullable=False),
    sa.Column("status", sa.String(20), nullable=True),
    sa.Column("reason", sa.String(100), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.UniqueConstraint("patient_hash", "encounter_hash", "kind", name="uq_suppressions_subject"),
)

# Cards shown, per UTC day, service, finding and kind (plugin/storage/issued.py, written behind).
issued_counts = sa.Table(
    "issued_counts",
    metadata,
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("service_id", sa.String(100), primary_key=True),
    sa.Column("finding", sa.String(100), primary_key=True),
    sa.Column("kind", sa.String(100), primary_key=True),
    sa.Column("count", sa.Integer, nullable=False),
)

# The SMART page's launches and sessions (plugin/smart/sessions.py).
smart_sessions = sa.Table(
    "smart_sessions",
    metadata,
    sa.Column("key_hash", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
)
