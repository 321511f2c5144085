"""What the service keeps: feedback, issued-card counts, and the JWT replay cache.

SQLAlchemy Core over SQLite (default, a file in CDS_DATA_DIR) or PostgreSQL
(CDS_DATABASE_URL). The schema is owned by Alembic migrations in
``plugin/storage/migrations``; :func:`migrate` brings a database to the newest
revision and is run before the app serves. A call writes nothing here: the card's
uuid carries its record (``token``), and cards shown are counted behind (``issued``).
Feedback is joined by opening the uuid, and stored with the card's finding and kind
and a digest of its uuid, never a patient id or hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from cds_hooks.errors import StorageError
from cds_hooks.models import FeedbackItem
from plugin.storage.schema import feedback, insert_into, issued_counts, jwt_replay
from plugin.storage.token import CardRecord


@dataclass(frozen=True, slots=True)
class StoredFeedback:
    card_uuid: str
    service_id: str
    finding: str | None
    kind: str | None
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


def card_key(card_uuid: str) -> str:
    """What a feedback row keeps of its card's uuid (the duplicate key): its SHA-256, hex."""
    return hashlib.sha256(card_uuid.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Joined:
    """A feedback item and the record its card's uuid opened to (None: an unknown card)."""

    item: FeedbackItem
    card: CardRecord | None


# Called in the feedback transaction with the items stored now; returns suppressions made.
AfterRecord = Callable[[sa.Connection, Sequence[Joined], datetime], int]


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    """What one feedback post did: the items stored now, retries, and cards not known."""

    recorded: list[Joined]
    duplicates: int
    unknown: int
    suppressions: int = 0


def _feedback_row(service_id: str, joined: Joined, now: datetime) -> dict[str, Any]:
    item, card = joined.item, joined.card
    reason = item.overrideReason.reason if item.overrideReason else None
    accepted = [s.id for s in item.acceptedSuggestions or []]
    return {
        "card_uuid": card_key(item.card),
        "service_id": service_id,
        "finding": card.finding[:100] if card else None,
        "kind": card.kind[:100] if card else None,
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
# Remembered JWT ids live minutes (a token's lifetime and the clock leeway); deleting the
# expired ones once a minute keeps the table that small without a delete on every call.
JTI_PURGE_INTERVAL = timedelta(minutes=1)


class Store:
    def __init__(
        self, engine: Engine, clock: Clock = utcnow, retention: timedelta = DEFAULT_RETENTION
    ):
        self.engine = engine
        self.clock = clock
        self.retention = retention
        self._jti_purged_at: datetime | None = None
        # The replay cache's statements each commit on their own; under SQLite one thread of
        # the process at a time writes (see remember_jti).
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._jti_turn: AbstractContextManager[Any] = (
            threading.Lock() if engine.dialect.name == "sqlite" else nullcontext()
        )

    def ping(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.select(sa.func.count()).select_from(feedback).limit(1))
        except SQLAlchemyError as exc:
            raise StorageError() from exc

    def record_feedback(
        self, service_id: str, joined: Iterable[Joined], after: AfterRecord | None = None
    ) -> FeedbackResult:
        """Store one outcome per known card, in one transaction committed before this returns;
        ``after`` runs in the same transaction with the items stored now (suppressions).

        A card whose uuid did not open (not issued by this service to this caller, tampered
        with, or past its retention) is counted and not stored, so a stream of invented uuids
        writes nothing; a card that already has its outcome is a retry and changes nothing.
        Feedback past ``CDS_FEEDBACK_RETENTION_DAYS`` is deleted in the same transaction."""
        items = list(joined)
        for attempt in range(3):
            try:
                return self._record_feedback(service_id, items, after)
            except IntegrityError:
                # The same card's outcome (or the same suppression) was written by a concurrent
                # post at this moment: read again.
                if attempt == 2:
                    raise StorageError() from None
            except SQLAlchemyError as exc:
                raise StorageError() from exc
        raise StorageError()  # pragma: no cover - the loop returns or raises

    def _record_feedback(
        self, service_id: str, items: list[Joined], after: AfterRecord | None
    ) -> FeedbackResult:
        known = [joined for joined in items if joined.card is not None]
        unknown = len(items) - len(known)
        if not known:
            return FeedbackResult(recorded=[], duplicates=0, unknown=unknown)
        now = self.clock()
        with self.engine.begin() as conn:
            # Write first: SQLite takes the write lock before it reads (no stale snapshot).
            self._purge_feedback(conn, now)
            keys = {card_key(joined.item.card) for joined in known}
            seen = set(
                conn.execute(
                    sa.select(feedback.c.card_uuid).where(
                        feedback.c.card_uuid.in_(sorted(keys)),
                        feedback.c.service_id == service_id,
                    )
                ).scalars()
            )
            recorded: list[Joined] = []
            duplicates = 0
            for joined in known:
                key = card_key(joined.item.card)
                if key in seen:
                    duplicates += 1
                    continue
                seen.add(key)
                recorded.append(joined)
            made = 0
            if recorded:
                conn.execute(
                    feedback.insert(), [_feedback_row(service_id, j, now) for j in recorded]
                )
                if after is not None:
                    made = after(conn, recorded, now)
        return FeedbackResult(recorded, duplicates, unknown, made)

    def _purge_feedback(self, conn: sa.Connection, now: datetime) -> int:
        cutoff = now - self.retention
        gone = conn.execute(feedback.delete().where(feedback.c.received_at < cutoff))
        return int(gone.rowcount or 0)

    def purge(self) -> int:
        """Delete feedback and issued-card counts past retention; return rows deleted."""
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                deleted = self._purge_feedback(conn, now)
                # A day's count goes when the whole day is past retention.
                old = conn.execute(
                    issued_counts.delete().where(
                        issued_counts.c.day < (now - self.retention).date()
                    )
                )
                return deleted + int(old.rowcount or 0)
        except SQLAlchemyError as exc:
            raise StorageError() from exc

    def feedback_for(self, card_uuid: str) -> list[StoredFeedback]:
        """The outcomes stored for the card with this uuid."""
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    sa.select(feedback)
                    .where(feedback.c.card_uuid == card_key(card_uuid))
                    .order_by(feedback.c.id)
                )
                .mappings()
                .all()
            )
        return [
            StoredFeedback(
                card_uuid=card_uuid,
                service_id=row["service_id"],
                finding=row["finding"],
                kind=row["kind"],
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
        """Record a JWT id; False when it was already seen and has not expired.

        One statement on the call's path: an insert that does nothing when the id is known
        (then, only a row already past its expiry may be taken over). Expired ids are deleted
        at most once per :data:`JTI_PURGE_INTERVAL` per process, not on every call.

        Each statement commits on its own, so SQLite's write lock is held for one statement
        inside the driver, never across Python code that may be waiting for the interpreter
        lock; and a process's threads take turns (one lock) rather than meet SQLite's busy
        handler, which sleeps in steps of milliseconds: with 16 signed calls at once the
        slowest 1 % waited 0.65–0.94 s without both (docs/operations.md)."""
        key_hash = hashlib.sha256(key.encode("utf-8")).hexdigest()
        now = self.clock()
        try:
            with self._jti_turn, self._autocommit.connect() as conn:
                if self._jti_purged_at is None or now - self._jti_purged_at >= JTI_PURGE_INTERVAL:
                    conn.execute(jwt_replay.delete().where(jwt_replay.c.expires_at < now))
                    self._jti_purged_at = now
                added = conn.execute(
                    insert_into(conn, jwt_replay)
                    .values(key_hash=key_hash, expires_at=expires_at)
                    .on_conflict_do_nothing(index_elements=["key_hash"])
                    .returning(jwt_replay.c.key_hash)  # a row back: inserted (rowcount is -1)
                ).first()
                if added is not None:
                    return True
                # Known: a replay, unless its row outlived its expiry and was not purged yet.
                taken_over = conn.execute(
                    jwt_replay.update()
                    .where(jwt_replay.c.key_hash == key_hash, jwt_replay.c.expires_at < now)
                    .values(expires_at=expires_at)
                ).rowcount
                return bool(taken_over)
        except SQLAlchemyError as exc:
            raise StorageError() from exc
