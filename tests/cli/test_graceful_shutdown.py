"""SIGTERM is a graceful shutdown: the call in progress is answered, then the service exits 0."""

from __future__ import annotations

import http.client
import json
import signal
import time
from pathlib import Path

from tests.storage.test_scaleout import hook_body
from tests.support.service_process import ServiceProcess


def test_sigterm_lets_the_call_in_progress_finish(tmp_path: Path) -> None:
    service = ServiceProcess(tmp_path, workers=1, CDS_ALLOW_UNSIGNED="1")
    try:
        # The large record keeps the worker busy for tens of milliseconds.
        body = json.dumps(hook_body("mk-large-record")).encode()
        conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
        conn.request(
            "POST",
            "/cds-services/mkopper-patient-view",
            body=body,
            headers={"Content-Type": "application/json"},
        )
        time.sleep(0.005)
        service.proc.send_signal(signal.SIGTERM)
        response = conn.getresponse()
        answer = json.loads(response.read())
        conn.close()
        assert response.status == 200
        assert "cards" in answer

        assert service.proc.wait(timeout=30) == 0
        try:
            refused = http.client.HTTPConnection("127.0.0.1", service.port, timeout=5)
            refused.request("GET", "/healthz")
            refused.getresponse()
            raise AssertionError("the service still answers after SIGTERM")
        except ConnectionRefusedError:
            pass
    finally:
        service.stop()
