"""A worker killed with SIGKILL under a load of feedback posts loses no answered feedback.

The service answers 200 to feedback only after its transaction has committed,
so a worker that dies at any instant can lose only calls it has not answered.
Here several clients call the service and post feedback on the cards it answered,
without pause, while workers are killed,
one after another, with SIGKILL (no cleanup, no atexit); gunicorn starts new
ones. Afterwards every feedback that got a 200 must be in the database.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from http.client import HTTPException
from pathlib import Path

import pytest
import sqlalchemy as sa

from plugin.storage.schema import feedback
from plugin.storage.store import card_key, create_db_engine
from tests.support.paths import ROOT
from tests.support.service_process import ServiceProcess, fresh_schema, http, postgres_url

CLIENTS = 8
# A suspected-mpox patient with all data inline: each call answers cards to give feedback on.
DEMO_REQUEST = json.loads((ROOT / "plugin" / "cli" / "demo_request.json").read_text("utf-8"))
KILLS = 3


def post_until(
    stop: threading.Event, base: str, name: str, answered: list[str], failed: list[str]
) -> None:
    """Call patient-view, then post an outcome for each card it answered, until ``stop``."""
    url = f"{base}/cds-services/mkopper-patient-view"
    count = 0
    while not stop.is_set():
        count += 1
        request = dict(DEMO_REQUEST, hookInstance=f"{name}-{count}")
        try:
            status, response = http("POST", url, request, timeout=10)
        except (OSError, HTTPException):
            continue  # the call died with the worker: no card to give feedback on
        if status != 200:
            continue
        for card in [card["uuid"] for card in response["cards"]]:
            body = {
                "feedback": [
                    {
                        "card": card,
                        "outcome": "accepted",
                        "outcomeTimestamp": "2026-11-25T10:15:00Z",
                    }
                ]
            }
            try:
                status, answer = http("POST", f"{url}/feedback", body, timeout=10)
            except (OSError, HTTPException):
                # The connection died with the worker: not answered, so nothing is promised.
                failed.append(card)
                continue
            recorded = status == 200 and answer["recorded"] == 1
            (answered if recorded else failed).append(card)


def kill_workers_under_load(service: ServiceProcess) -> tuple[list[str], list[str]]:
    stop = threading.Event()
    answered: list[list[str]] = [[] for _ in range(CLIENTS)]
    failed: list[list[str]] = [[] for _ in range(CLIENTS)]
    threads = [
        threading.Thread(
            target=post_until, args=(stop, service.base, f"c{i}", answered[i], failed[i])
        )
        for i in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    killed: list[int] = []
    try:
        for _ in range(KILLS):
            time.sleep(0.7)
            before = sum(map(len, answered))
            workers = [pid for pid in service.workers() if pid not in killed]
            assert workers, "no live worker to kill"
            os.kill(workers[0], signal.SIGKILL)
            killed.append(workers[0])
            time.sleep(0.7)
            # The load goes on: the other worker and then the replacement answer.
            assert sum(map(len, answered)) > before
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    deadline = time.monotonic() + 15
    while len(service.workers()) != 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(service.workers()) == 2, "gunicorn did not replace the killed workers"
    assert not set(killed) & set(service.workers()), "a killed worker is still listed"
    return [c for part in answered for c in part], [c for part in failed for c in part]


def stored_cards(url: str) -> set[str]:
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(sa.select(feedback.c.card_uuid)).scalars())
    finally:
        engine.dispose()


def check_nothing_answered_is_lost(service: ServiceProcess, database_url: str) -> None:
    answered, failed = kill_workers_under_load(service)
    assert service.stop() == 0
    assert len(answered) > 100, "too little load to mean anything"
    # Calls cut off prove that the kills hit workers in the middle of requests.
    assert failed, "no call was cut off by a kill"
    # A feedback row keeps its card's uuid as a digest.
    missing = {card_key(card) for card in answered} - stored_cards(database_url)
    assert not missing, f"{len(missing)} answered feedback calls are not stored"


def test_sqlite(tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path, workers=2, CDS_ALLOW_UNSIGNED="1")
    try:
        url = f"sqlite:///{tmp_path / 'mkopper-cds.sqlite3'}"
        check_nothing_answered_is_lost(service, url)
        with create_db_engine(url).connect() as conn:
            assert conn.execute(sa.text("PRAGMA integrity_check")).scalar() == "ok"
    finally:
        service.stop()


@pytest.fixture
def postgres_schema() -> Iterator[str]:
    with fresh_schema(postgres_url()) as url:
        yield url


@pytest.mark.postgres
def test_postgresql(tmp_path: Path, postgres_schema: str) -> None:
    service = ServiceProcess(
        tmp_path, workers=2, CDS_ALLOW_UNSIGNED="1", CDS_DATABASE_URL=postgres_schema
    )
    try:
        check_nothing_answered_is_lost(service, postgres_schema)
    finally:
        service.stop()
