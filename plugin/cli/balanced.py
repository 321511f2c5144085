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
worker's count changes without waking it.
"""

from __future__ import annotations

import ctypes
import multiprocessing.sharedctypes
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

# Rows in the table per worker the master starts with, so that workers added later (TTIN) and
# replacements find a row; a worker that finds none accepts as a plain gthread worker does.
ROWS_PER_WORKER = 2
# How often a worker that stopped accepting for balance looks at the others' counts again.
RECHECK_S = 0.005
FREE = -1


def fair_share(mine: int, others: list[int]) -> bool:
    """Whether a worker holding ``mine`` connections should take the next one: while no other
    live worker holds fewer (alone, always)."""
    return not others or mine <= min(others)


class Board:
    """Each live worker's open connections, one row per worker, in memory shared by the master
    and its workers (made before the first fork)."""

    def __init__(self, rows: int) -> None:
        self.counts = multiprocessing.sharedctypes.RawArray(ctypes.c_long, [FREE] * rows)

    def claim(self, taken: set[int]) -> int | None:
        """A free row for a worker about to be forked (in the master); None when none is."""
        for row in range(len(self.counts)):
            if row not in taken:
                self.counts[row] = 0
                return row
        return None

    def release(self, row: int | None) -> None:
        """The row of a worker that exited (in the master)."""
        if row is not None:
            self.counts[row] = FREE

    def publish(self, row: int, count: int) -> None:
        self.counts[row] = count

    def others(self, row: int) -> list[int]:
        counts = self.counts
        return [counts[i] for i in range(len(counts)) if i != row and counts[i] != FREE]


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
