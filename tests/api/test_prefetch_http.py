"""Prefetch fetching through the HTTP service call: budget, 412, allowlist, never a 500.

The app is built with the test registry (``test-view`` requires ``conditions``) and a
``fhirServer`` on a real loopback socket: the fault server, a connection counter, or
the Medplum FHIR test server.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.support import fhir_faults, fhirserver
from tests.support.fake_services import fake_registry
from tests.support.fhir_faults import FAULTS, AcceptRecorder
from tests.support.fhirserver import FhirTestServer

BUDGET_MS = 500
# The slow faults hold an answer for 5 s: finishing well before that shows the budget cut the
# fetch. The margin over the budget is for a loaded test machine, not for the service.
LIMIT_S = BUDGET_MS / 1000 + 1.0
TOKEN = "http-fault-token-27182"

recorder = fhir_faults.recorder  # pytest fixtures, used by name
fault_server = fhir_faults.fault_server
fhir_server = fhirserver.fhir_server
fhir_store = fhirserver.fhir_store


def body(base: str, prefetch: dict[str, Any] | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": "5b0f1c3e-1111-4a2b-8c3d-9e8f7a6b5c4d",
        "fhirServer": base,
        "fhirAuthorization": {
            "access_token": TOKEN,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "cds",
        },
        "context": {"userId": "Practitioner/u1", "patientId": "p1"},
    }
    if prefetch is not None:
        request["prefetch"] = prefetch
    return request


def app_client(make_app: Any, allowed: str) -> FlaskClient:
    app = make_app(
        CDS_REGISTRY=fake_registry(),
        CDS_ALLOWED_FHIR_SERVERS=allowed,
        CDS_PREFETCH_BUDGET_MS=str(BUDGET_MS),
    )
    client: FlaskClient = app.test_client()
    return client


def timed_post(client: FlaskClient, payload: dict[str, Any]) -> tuple[Any, float]:
    started = time.monotonic()
    response = client.post("/cds-services/test-view", json=payload)
    return response, time.monotonic() - started


@pytest.mark.parametrize("mode", FAULTS)
def test_fhir_faults_answer_412_within_budget(make_app: Any, fault_server: str, mode: str) -> None:
    base = f"{fault_server}/{mode}"
    client = app_client(make_app, base)
    response, elapsed = timed_post(client, body(base))
    assert response.status_code == 412
    error = response.get_json()["error"]
    assert error["details"] == [{"prefetchKey": "conditions"}]
    assert TOKEN not in response.get_data(as_text=True)
    assert elapsed <= LIMIT_S


def test_fhir_server_down_answers_412(make_app: Any) -> None:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"
    sock.close()
    response, elapsed = timed_post(app_client(make_app, base), body(base))
    assert response.status_code == 412
    assert elapsed <= LIMIT_S


def test_fhir_server_not_on_allowlist_gets_no_connection(
    make_app: Any, recorder: AcceptRecorder
) -> None:
    base = f"http://127.0.0.1:{recorder.port}/fhir"
    client = app_client(make_app, "https://fhir.example.org/r4")
    response, _ = timed_post(client, body(base))
    assert response.status_code == 412
    time.sleep(0.1)
    assert recorder.accepted == 0


def test_supplied_prefetch_needs_no_server(make_app: Any, recorder: AcceptRecorder) -> None:
    base = f"http://127.0.0.1:{recorder.port}/fhir"
    client = app_client(make_app, base)
    prefetch = {
        "conditions": {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": "Condition", "id": "c1"}}],
        }
    }
    response, _ = timed_post(client, body(base, prefetch))
    assert response.status_code == 200
    assert response.get_json()["cards"][0]["summary"] == "1 conditions"
    assert recorder.accepted == 0


@pytest.mark.fhir_server
def test_absent_prefetch_is_fetched_from_the_fhir_server(
    make_app: Any, fhir_store: FhirTestServer
) -> None:
    fhir_store.load(
        [
            {"resourceType": "Patient", "id": "p1"},
            {"resourceType": "Patient", "id": "p2"},
            *(
                {"resourceType": "Condition", "id": f"c{i}", "subject": {"reference": "Patient/p1"}}
                for i in range(3)
            ),
            {"resourceType": "Condition", "id": "other", "subject": {"reference": "Patient/p2"}},
        ]
    )
    client = app_client(make_app, fhir_store.base_url)
    response, elapsed = timed_post(client, body(fhir_store.base_url))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["cards"][0]["summary"] == "3 conditions"
    assert elapsed <= LIMIT_S
