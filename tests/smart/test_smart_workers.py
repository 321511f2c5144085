"""The SMART launch under gunicorn with several workers: any worker finishes any launch.

Pending launches and sessions live in the database, so the launch, the
callback and the page may each be served by a different worker process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.service_process import ServiceProcess
from tests.support.smart_auth_server import SmartEhr

UNUSED_UPSTREAM = "http://127.0.0.1:9"
LAUNCHES = 12


@pytest.fixture
def ehr() -> Iterator[SmartEhr]:
    server = SmartEhr(UNUSED_UPSTREAM).start()
    try:
        yield server
    finally:
        server.stop()


def test_launches_complete_across_workers(tmp_path: Path, ehr: SmartEhr) -> None:
    service = ServiceProcess(tmp_path, workers=4, CDS_ALLOWED_FHIR_SERVERS=ehr.fhir_base)
    try:
        ehr.register_client("mkopper-cds", f"{service.base}/smart/callback")
        for _ in range(LAUNCHES):
            browser = requests.Session()
            launch = browser.get(
                f"{service.base}/smart/launch",
                params={"iss": ehr.fhir_base, "launch": ehr.new_launch("p1")},
                allow_redirects=False,
                timeout=10,
            )
            assert launch.status_code == 302, launch.text
            authorize = browser.get(launch.headers["Location"], allow_redirects=False, timeout=10)
            callback = browser.get(authorize.headers["Location"], allow_redirects=False, timeout=10)
            assert callback.status_code == 303, callback.text
            page = browser.get(f"{service.base}/smart/", timeout=30)
            # The session was found (whichever worker answered); the FHIR data behind this
            # EHR is unreachable on purpose, so the page is the "data unavailable" one.
            assert 'data-problem="fhir-unavailable"' in page.text, page.text
            assert page.status_code == 502
        assert len(service.workers()) == 4
    finally:
        service.stop()
