"""Cards shown are written behind by each gunicorn worker: on its timer, and when it stops."""

from __future__ import annotations

import json
import time
from pathlib import Path

import sqlalchemy as sa

from plugin.storage.issued import FLUSH_SECONDS
from plugin.storage.store import create_db_engine
from tests.support.paths import ROOT
from tests.support.service_process import ServiceProcess, http

DEMO_REQUEST = json.loads((ROOT / "plugin" / "cli" / "demo_request.json").read_text("utf-8"))
URL = "/cds-services/mkopper-patient-view"


def counted(url: str) -> int:
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            total = conn.execute(sa.text("SELECT COALESCE(SUM(count), 0) FROM issued_counts"))
            return int(total.scalar_one())
    finally:
        engine.dispose()


def shown(service: ServiceProcess, calls: int) -> int:
    cards = 0
    for number in range(calls):
        status, body = http(
            "POST", service.base + URL, dict(DEMO_REQUEST, hookInstance=f"h{number}")
        )
        assert status == 200, body
        cards += len(body["cards"])
    assert cards >= calls  # the demo patient has cards
    return cards


def test_counts_are_written_on_the_timer_and_at_a_graceful_stop(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'mkopper-cds.sqlite3'}"
    service = ServiceProcess(tmp_path, workers=2, CDS_ALLOW_UNSIGNED="1")
    try:
        first = shown(service, 20)
        # The writer thread adds them within its interval (this tests that timer itself).
        deadline = time.monotonic() + 4 * FLUSH_SECONDS
        while counted(url) < first and time.monotonic() < deadline:
            time.sleep(0.2)
        assert counted(url) == first
        second = shown(service, 20)
        # SIGTERM: each worker writes what it still holds as it exits.
        assert service.stop() == 0
        assert counted(url) == first + second
    finally:
        service.stop()
