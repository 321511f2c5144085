"""One thread per process fires the FHIR exchanges' watchdogs at their deadlines
(``cds_hooks.fhir._Deadlines``): in deadline order, never one that finished in time, and again
in a forked child. These tests are about the timer itself, so they wait on the real clock, for
tens of milliseconds."""

from __future__ import annotations

import os
import threading
import time

from cds_hooks.fhir import _Deadlines, _Watchdog


def _fired_within(watchdog: _Watchdog, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if watchdog.fired:
            return True
        time.sleep(0.005)
    return watchdog.fired


def test_watchdogs_fire_in_deadline_order_and_a_finished_one_never() -> None:
    deadlines = _Deadlines()
    now = time.monotonic()
    late, early, finished = _Watchdog(), _Watchdog(), _Watchdog()
    deadlines.watch(late, now + 0.4)
    deadlines.watch(early, now + 0.05)  # a new earliest deadline wakes the thread
    deadlines.watch(finished, now + 0.02)
    finished.finish()
    assert _fired_within(early, 0.3)
    assert not late.fired
    assert _fired_within(late, 1.0)
    assert not finished.fired


def test_one_thread_serves_every_exchange() -> None:
    deadlines = _Deadlines()
    before = threading.active_count()
    watchdogs = [_Watchdog() for _ in range(50)]
    now = time.monotonic()
    for n, watchdog in enumerate(watchdogs):
        deadlines.watch(watchdog, now + 0.01 + n * 0.001)
    assert threading.active_count() == before + 1
    assert all(_fired_within(watchdog, 1.0) for watchdog in watchdogs)
    assert threading.active_count() == before + 1  # and it stays for the next


def test_a_forked_child_gets_its_own_thread() -> None:
    deadlines = _Deadlines()
    deadlines.watch(_Watchdog(), time.monotonic() + 0.01)  # the parent's thread is running
    pid = os.fork()
    if pid == 0:  # the child: a thread of the parent's does not exist here
        watchdog = _Watchdog()
        deadlines.watch(watchdog, time.monotonic() + 0.02)
        os._exit(0 if _fired_within(watchdog, 1.0) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
