"""A gthread worker that takes a new connection only while it holds no more than the others.

Gunicorn's ``gthread`` workers all watch the one listening socket, and whichever wakes first
accepts. A client that opens its connections at once (an EHR's connection pool, a load
balancer, wrk) often finds one worker awake and the other asleep, and each connection then
stays with the worker that accepted it for as long as it is kept alive: splits of 14 and 2
were seen for 16 connections (docs/operations.md). The busier worker queues its calls on one
core while the other core idles, and its queue is the tail of every figure.

:class:`BalancedThreadWorker` is gunicorn's ``gthread`` worker with one rule added: a worker
watches the listening socket only while it holds no more connections than the least loaded of
the others (open connections: in a call, kept alive, or not yet sent). The workers publish
their counts in a small table in shared memory (:class:`Board`), which the master hands out a
row of before each fork and clears when the worker exits. One worker always has the least, so
one always accepts; slow clients count like the others and are spread over the workers too,
and a worker's threads still park them (the slow-client requirement of docs/operations.md).
A worker that stops accepting for balance looks again every :data:`RECHECK_S`, since the other
worker's count changes without waking it. A worker publishes its count at least once a second
(gunicorn's loop wakes that often); a row not published for :data:`STALE_S` is not counted, so
a worker that hangs with few connections does not hold the others back until gunicorn's
timeout replaces it.

A thread that has answered a request on a kept-alive connection also waits up to
:data:`LINGER_S` for the next request on it, and answers that itself, before handing the
connection back to the poller: an EHR under load sends its next call on the connection as soon
as it has the answer, and each trip through gunicorn's poller (the future's callback, the
wake-up pipe, the socket registered and unregistered) cost more CPU than a short wait on the
socket (docs/operations.md). A lingering thread uses no CPU, and a connection that sends
nothing within the wait goes back to the poller as before.
"""

from __future__ import annotations

import ctypes
import multiprocessing.sharedctypes
import select
import time
from collections.abc import Callable
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

# Rows in the table per worker the master starts with, so that workers added later (TTIN) and
# replacements find a row; a worker that finds none accepts as a plain gthread worker does.
ROWS_PER_WORKER = 2
# How often a worker that stopped accepting for balance looks at the others' counts again.
RECHECK_S = 0.005
# How long a thread that answered a kept-alive request waits for the next one on the same
# connection before it hands the connection back to the poller.
LINGER_S = 0.02
# A row published longer ago than this is a worker that is not running its loop.
STALE_S = 3.0
FREE = -1


def fair_share(mine: int, others: list[int]) -> bool:
    """Whether a worker holding ``mine`` connections should take the next one: while no other
    live worker holds fewer (alone, always)."""
    return not others or mine <= min(others)


class Board:
    """Each live worker's open connections, one row per worker, in memory shared by the master
    and its workers (made before the first fork)."""

    def __init__(self, rows: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.counts = multiprocessing.sharedctypes.RawArray(ctypes.c_long, [FREE] * rows)
        # When each row was last published (the monotonic clock is the same in every process).
        self.published = multiprocessing.sharedctypes.RawArray(ctypes.c_double, rows)
        self.clock = clock

    def claim(self, taken: set[int]) -> int | None:
        """A free row for a worker about to be forked (in the master); None when none is."""
        for row in range(len(self.counts)):
            if row not in taken:
                self.counts[row] = 0
                self.published[row] = self.clock()
                return row
        return None

    def release(self, row: int | None) -> None:
        """The row of a worker that exited (in the master)."""
        if row is not None:
            self.counts[row] = FREE

    def publish(self, row: int, count: int) -> None:
        self.counts[row] = count
        self.published[row] = self.clock()

    def others(self, row: int) -> list[int]:
        """The counts of the other live workers that published within :data:`STALE_S`."""
        counts, published = self.counts, self.published
        since = self.clock() - STALE_S
        return [
            counts[i]
            for i in range(len(counts))
            if i != row and counts[i] != FREE and published[i] >= since
        ]


_BOARD: Board | None = None


def pre_fork(server: Any, worker: Any) -> None:
    """Gunicorn's ``pre_fork`` hook (in the master): give the worker its row, making the table
    before the first fork."""
    global _BOARD
    if _BOARD is None:
        _BOARD = Board(max(2, ROWS_PER_WORKER * int(server.num_workers)))
    taken = {
        row
        for live in server.WORKERS.values()
        if (row := getattr(live, "board_row", None)) is not None
    }
    worker.board_row = _BOARD.claim(taken)


def child_exit(_server: Any, worker: Any) -> None:
    """Gunicorn's ``child_exit`` hook (in the master): free the worker's row."""
    if _BOARD is not None:
        _BOARD.release(getattr(worker, "board_row", None))


class BalancedThreadWorker(ThreadWorker):  # type: ignore[misc]
    """Gunicorn's gthread worker that accepts only its fair share of connections."""

    board_row: int | None = None

    def _balanced(self) -> bool:
        row = self.board_row
        if row is None or _BOARD is None:
            return True
        _BOARD.publish(row, self.nr_conns)
        return fair_share(self.nr_conns, _BOARD.others(row))

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled and self._balanced())

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        if not self.alive:  # stopping: gunicorn's own loop, accepting nothing
            super().wait_for_and_dispatch_events(timeout)
            return
        # Gunicorn's loop asks again only when its own limit changes its mind: ask every time.
        self.set_accept_enabled(self.nr_conns < self.worker_connections)
        if not self._accepting and self.nr_conns < self.worker_connections:
            timeout = min(timeout, RECHECK_S)  # held back for balance: look again soon
        super().wait_for_and_dispatch_events(timeout)

    def handle(self, conn: Any) -> Any:
        """Gunicorn's ``handle``, then the next requests on the same kept-alive connection
        while each arrives within :data:`LINGER_S` (plain HTTP/1.1; not while stopping)."""
        keep = super().handle(conn)
        if keep is not True or conn.is_http2 or self.cfg.is_ssl:
            return keep
        waiting: select.poll | None = None
        while keep is True and self.alive:
            # A body drain may have read the next request ahead: then the socket is not
            # readable, but the request is there.
            if not conn.parser.unreader.buf.getvalue():
                if waiting is None:
                    waiting = select.poll()
                    waiting.register(conn.sock.fileno(), select.POLLIN)
                if not waiting.poll(LINGER_S * 1000):
                    break
            keep = super().handle(conn)
        return keep
