"""How many cards were shown: counted in memory, written behind, off the request path.

A call adds its cards to a per-process count by (day, service, finding, kind); a background
thread adds the counts into ``issued_counts`` every :data:`FLUSH_SECONDS`, and once more when
the process exits normally (gunicorn's graceful stop, SIGTERM). A worker that dies without
cleanup (SIGKILL, a crash, the OOM killer) loses the counts of at most its last flush interval;
feedback is never among them: it is committed before its 200. A flush that fails keeps its
counts for the next one.

The dashboard (``plugin.admin.report``) divides outcomes by these counts; its own process
flushes before it reads, the other workers' counts arrive within one interval.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections import Counter
from collections.abc import Iterable
from datetime import date

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from plugin.storage.schema import insert_into, issued_counts

FLUSH_SECONDS = 5.0

log = logging.getLogger("plugin.storage")

Key = tuple[date, str, str, str]  # day (UTC), service id, finding, kind


def _upsert(conn: sa.Connection, rows: list[dict[str, object]]) -> None:
    """Add ``rows`` to the counts in one statement (SQLite and PostgreSQL both upsert)."""
    statement = insert_into(conn, issued_counts)
    statement = statement.on_conflict_do_update(
        index_elements=["day", "service_id", "finding", "kind"],
        set_={"count": issued_counts.c.count + statement.excluded["count"]},
    )
    conn.execute(statement, rows)


class IssuedCounts:
    """The cards this process showed and has not written yet."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._lock = threading.Lock()
        self._pending: Counter[Key] = Counter()
        self._watched_in: int | None = None

    def add(self, day: date, service_id: str, cards: Iterable[tuple[str, str]]) -> None:
        """Count cards (finding, kind) shown today by ``service_id``; no I/O."""
        with self._lock:
            for finding, kind in cards:
                self._pending[(day, service_id[:100], finding[:100], kind[:100])] += 1
        if self._watched_in != os.getpid():
            # The first count in this process (after gunicorn's fork, too) starts its writer.
            self._watched_in = os.getpid()
            _WRITER.watch(self)

    def pending(self) -> int:
        with self._lock:
            return sum(self._pending.values())

    def flush(self) -> int:
        """Write the pending counts; return how many cards they counted (0 on failure)."""
        with self._lock:
            taken, self._pending = self._pending, Counter()
        if not taken:
            return 0
        rows: list[dict[str, object]] = [
            {"day": day, "service_id": service, "finding": finding, "kind": kind, "count": count}
            for (day, service, finding, kind), count in sorted(taken.items())
        ]
        try:
            with self.engine.begin() as conn:
                _upsert(conn, rows)
        except SQLAlchemyError as exc:
            with self._lock:
                self._pending.update(taken)
            log.warning(
                "issued-card counts not written, kept for the next flush: %s", type(exc).__name__
            )
            return 0
        return sum(taken.values())


class _WriteBehind:
    """One thread per process flushing every count object that has counted in it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: weakref.WeakSet[IssuedCounts] = weakref.WeakSet()
        self._pid: int | None = None
        self._wake = threading.Event()

    def watch(self, counts: IssuedCounts) -> None:
        with self._lock:
            if self._pid != os.getpid():
                # A new process: what the parent watched is the parent's to write.
                self._pid = os.getpid()
                self._counts = weakref.WeakSet()
                self._wake = threading.Event()
                threading.Thread(
                    target=self._run, args=(self._wake,), name="issued-counts", daemon=True
                ).start()
                atexit.register(self.flush_all)
            self._counts.add(counts)

    def _run(self, wake: threading.Event) -> None:
        while not wake.wait(FLUSH_SECONDS):
            self.flush_all()

    def flush_all(self) -> None:
        with self._lock:
            counts = list(self._counts)
        for each in counts:
            try:
                each.flush()
            except Exception:  # noqa: BLE001 - the writer thread must outlive any one failure
                log.warning("issued-card counts not written", exc_info=False)


_WRITER = _WriteBehind()
