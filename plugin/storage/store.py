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
from datetime import UTC, datetime, timedelta
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
    caller_hash: str,
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
                "caller_hash": caller_hash,
                "issued_at": now,
            }
            for uuid, finding, topic in cards
        ],
    )


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    """What one feedback post did: the items stored now, retries, and cards not known."""

    recorded: list[FeedbackItem]
    duplicates: int
    unknown: int


def _feedback_row(service_id: str, item: FeedbackItem, now: datetime) -> dict[str, Any]:
    reason = item.overrideReason.reason if item.overrideReason else None
    accepted = [s.id for s in item.acceptedSuggestions or []]
    return {
        "card_uuid": item.card,
        "service_id": service_id,
        "known_card": True,
        "outcome": item.outcome,
        "accepted_suggestions": json.dumps(accepted) if accepted else None,
        "override_system": reason.system[:255] if reason and reason.system else None,
        "override_code": reason.code[:100] if reason else None,
        "override_display": reason.display[:255] if reason and reason.display else None,
        "user_comment": item.overrideReason.userComment if item.overrideReason else None,
        "outcome_time": item.outcomeTimestamp[:40],
        "received_at": now,
    }


DEFAULT_RETENTION = timedelta(days=90)


class Store:
    def __init__(
        self, engine: Engine, clock: Clock = utcnow, retention: timedelta = DEFAULT_RETENTION
    ):
        self.engine = engine
        self.clock = clock
        self.retention = retention

    def ping(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.select(sa.func.count()).select_from(issued_cards).limit(1))
        except SQLAlchemyError as exc:
            raise StorageError() from exc

    def record_feedback(
        self, service_id: str, items: Iterable[FeedbackItem], callers: Sequence[str] = ("",)
    ) -> FeedbackResult:
        """Store one outcome per card issued to the caller (``callers``: the candidate hashes of
        the caller), in one transaction committed before this returns.

        A card this service did not issue to this caller (or whose record is past retention)
        is counted and not stored, so a stream of invented uuids writes nothing; a card that
        already has its outcome is a retry and changes nothing. Feedback past
        ``CDS_FEEDBACK_RETENTION_DAYS`` is deleted in the same transaction."""
        items = list(items)
        for attempt in range(2):
            try:
                return self._record_feedback(service_id, items, list(callers))
            except IntegrityError:
                # The same card's outcome was written by a concurrent retry: read it again.
                if attempt == 1:
                    raise StorageError() from None
            except SQLAlchemyError as exc:
                raise StorageError() from exc
        raise StorageError()  # pragma: no cover - the loop returns or raises

    def _record_feedback(
        self, service_id: str, items: list[FeedbackItem], callers: list[str]
    ) -> FeedbackResult:
        now = self.clock()
        with self.engine.begin() as conn:
            self._purge_feedback(conn, now)
            uuids = sorted({item.card for item in items})
            known = set(
                conn.execute(
                    sa.select(issued_cards.c.card_uuid).where(
                        issued_cards.c.card_uuid.in_(uuids),
                        issued_cards.c.service_id == service_id,
                        issued_cards.c.caller_hash.in_(callers),
                    )
                ).scalars()
            )
            seen = set(
                conn.execute(
                    sa.select(feedback.c.card_uuid).where(
                        feedback.c.card_uuid.in_(sorted(known)),
                        feedback.c.service_id == service_id,
                    )
                ).scalars()
            )
            recorded: list[FeedbackItem] = []
            unknown = duplicates = 0
            for item in items:
                if item.card not in known:
                    unknown += 1
                    continue
                if item.card in seen:
                    duplicates += 1
                    continue
                seen.add(item.card)
                recorded.append(item)
            if recorded:
                conn.execute(
                    feedback.insert(), [_feedback_row(service_id, i, now) for i in recorded]
                )
        return FeedbackResult(recorded=recorded, duplicates=duplicates, unknown=unknown)

    def _purge_feedback(self, conn: sa.Connection, now: datetime) -> int:
        cutoff = now - self.retention
        gone = conn.execute(feedback.delete().where(feedback.c.received_at < cutoff))
        old = conn.execute(issued_cards.delete().where(issued_cards.c.issued_at < cutoff))
        return int(gone.rowcount or 0) + int(old.rowcount or 0)

    def purge(self) -> int:
        """Delete feedback and issued-card records past retention; return rows deleted."""
        try:
            with self.engine.begin() as conn:
                return self._purge_feedback(conn, self.clock())
        except SQLAlchemyError as exc:
            raise StorageError() from exc

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
