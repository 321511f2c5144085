"""What the service keeps: issued cards, feedback, and the JWT replay cache.

SQLAlchemy Core over SQLite (default, a file in CDS_DATA_DIR) or PostgreSQL
(CDS_DATABASE_URL). The schema is owned by Alembic migrations in
``plugin/storage/migrations``; :func:`migrate` brings a database to the newest
revision and is run before the app serves. No patient data is stored: issued
cards are keyed by card uuid, service, finding and hookInstance only.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from cds_hooks.errors import StorageError
from cds_hooks.models import FeedbackItem
from plugin.storage.schema import feedback, issued_cards, jwt_replay


@dataclass(frozen=True, slots=True)
class StoredFeedback:
    card_uuid: str
    service_id: str
    known_card: bool
    outcome: str
    accepted_suggestions: list[str]
    override_code: str | None
    override_display: str | None
    user_comment: str | None
    outcome_time: str
    received_at: datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


Clock = Callable[[], datetime]


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored here is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def create_db_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30}, pool_pre_ping=True)

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            # WAL lets several workers read while one writes; a commit survives a killed
            # process (only an OS crash could lose the last commits with synchronous=NORMAL).
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def migrate(url: str) -> None:
    """Upgrade the database at ``url`` to the newest schema revision."""
    # Keep "Running upgrade ..." in the log, not alembic's plugin set-up chatter at import.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


def insert_issued(
    conn: sa.Connection,
    service_id: str,
    hook_instance: str,
    cards: Sequence[tuple[str, str, str | None]],
    now: datetime,
) -> None:
    """Insert issued cards (card uuid, finding, topic code) in the caller's transaction."""
    if not cards:
        return
    conn.execute(
        issued_cards.insert(),
        [
            {
                "card_uuid": uuid,
                "service_id": service_id,
                "finding": finding,
                "topic": topic,
                "hook_instance": hook_instance[:100],
                "issued_at": now,
            }
            for uuid, finding, topic in cards
        ],
    )


class Store:
    def __init__(self, engine: Engine, clock: Clock = utcnow):
        self.engine = engine
        self.clock = clock

    def ping(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.select(sa.func.count()).select_from(issued_cards).limit(1))
        except SQLAlchemyError as exc:
            raise StorageError() from exc

    def record_feedback(self, service_id: str, items: Iterable[FeedbackItem]) -> int:
        """Store feedback in one transaction, committed before this returns."""
        items = list(items)
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                uuids = [item.card for item in items]
                known = set(
                    conn.execute(
                        sa.select(issued_cards.c.card_uuid).where(
                            issued_cards.c.card_uuid.in_(uuids),
                            issued_cards.c.service_id == service_id,
                        )
                    ).scalars()
                )
                rows = []
                for item in items:
                    reason = item.overrideReason.reason if item.overrideReason else None
                    accepted = [s.id for s in item.acceptedSuggestions or []]
                    rows.append(
                        {
                            "card_uuid": item.card[:64],
                            "service_id": service_id,
                            "known_card": item.card in known,
                            "outcome": item.outcome,
                            "accepted_suggestions": json.dumps(accepted) if accepted else None,
                            "override_system": reason.system if reason else None,
                            "override_code": reason.code if reason else None,
                            "override_display": reason.display if reason else None,
                            "user_comment": item.overrideReason.userComment
                            if item.overrideReason
                            else None,
                            "outcome_time": item.outcomeTimestamp[:40],
                            "received_at": now,
                        }
                    )
                conn.execute(feedback.insert(), rows)
        except SQLAlchemyError as exc:
            raise StorageError() from exc
        return len(items)

    def feedback_for(self, card_uuid: str) -> list[StoredFeedback]:
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    sa.select(feedback)
                    .where(feedback.c.card_uuid == card_uuid)
                    .order_by(feedback.c.id)
                )
                .mappings()
                .all()
            )
        return [
            StoredFeedback(
                card_uuid=row["card_uuid"],
                service_id=row["service_id"],
                known_card=bool(row["known_card"]),
                outcome=row["outcome"],
                accepted_suggestions=json.loads(row["accepted_suggestions"] or "[]"),
                override_code=row["override_code"],
                override_display=row["override_display"],
                user_comment=row["user_comment"],
                outcome_time=row["outcome_time"],
                received_at=_as_utc(row["received_at"]),
            )
            for row in rows
        ]

    def remember_jti(self, key: str, expires_at: datetime) -> bool:
        """Record a JWT id; False when it was already seen and has not expired."""
        key_hash = hashlib.sha256(key.encode("utf-8")).hexdigest()
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                conn.execute(jwt_replay.delete().where(jwt_replay.c.expires_at < now))
                conn.execute(jwt_replay.insert().values(key_hash=key_hash, expires_at=expires_at))
            return True
        except IntegrityError:
            return False
        except SQLAlchemyError as exc:
            raise StorageError() from exc
