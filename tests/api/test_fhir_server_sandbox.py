"""The FHIR test server as the CDS Hooks Sandbox uses it: CORS for FHIR_TEST_CORS_ORIGINS and
search by POST with a form-encoded body (FHIR R4 `Type/_search`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from tests.support import fhirserver
from tests.support.fhirserver import FhirTestServer, require_server

fhir_server = fhirserver.fhir_server  # pytest fixtures, used by name
fhir_store = fhirserver.fhir_store

pytestmark = pytest.mark.fhir_server

SANDBOX = "http://127.0.0.1:8089"
OTHER = "https://sandbox.cds-hooks.org"


@pytest.fixture(scope="module")
def cors_server() -> Iterator[FhirTestServer]:
    require_server()
    server = FhirTestServer(cors_origins=f" {SANDBOX} ,{OTHER}").start()
    try:
        yield server
    finally:
        server.stop()


def conditions(server: FhirTestServer) -> None:
    server.reset()
    server.load(
        [
            {"resourceType": "Patient", "id": "p1"},
            {"resourceType": "Patient", "id": "p2"},
        ]
        + [
            {
                "resourceType": "Condition",
                "id": f"c{n}",
                "subject": {"reference": f"Patient/p{1 + n % 2}"},
                "code": {"text": "x"},
            }
            for n in range(5)
        ]
    )


@pytest.mark.parametrize("origin", [SANDBOX, OTHER])
def test_an_allowed_origin_gets_a_preflight_and_cors_headers(
    cors_server: FhirTestServer, origin: str
) -> None:
    preflight = requests.options(
        f"{cors_server.base_url}/Condition/_search",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization",
        },
        timeout=10,
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == origin
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Headers"] == "content-type,authorization"
    read = requests.get(f"{cors_server.base_url}/metadata", headers={"Origin": origin}, timeout=10)
    assert read.status_code == 200
    assert read.headers["Access-Control-Allow-Origin"] == origin
    assert read.headers["Vary"] == "Origin"


def test_another_origin_gets_no_cors(cors_server: FhirTestServer) -> None:
    evil = "http://127.0.0.1:6666"
    preflight = requests.options(
        f"{cors_server.base_url}/Patient",
        headers={"Origin": evil, "Access-Control-Request-Method": "GET"},
        timeout=10,
    )
    assert preflight.status_code == 403
    assert "Access-Control-Allow-Origin" not in preflight.headers
    read = requests.get(f"{cors_server.base_url}/metadata", headers={"Origin": evil}, timeout=10)
    assert "Access-Control-Allow-Origin" not in read.headers


def test_no_origins_configured_means_no_cors(fhir_store: FhirTestServer) -> None:
    read = requests.get(f"{fhir_store.base_url}/metadata", headers={"Origin": SANDBOX}, timeout=10)
    assert read.status_code == 200 and "Access-Control-Allow-Origin" not in read.headers


def test_post_search_with_a_form_body_is_the_get_search(cors_server: FhirTestServer) -> None:
    conditions(cors_server)
    base = cors_server.base_url
    got = requests.get(f"{base}/Condition", params={"patient": "p2"}, timeout=10).json()
    posted = requests.post(
        f"{base}/Condition/_search",
        data={"patient": "p2"},
        headers={"Origin": SANDBOX},
        timeout=10,
    )
    assert posted.status_code == 200, posted.text
    assert posted.headers["Access-Control-Allow-Origin"] == SANDBOX
    ids = sorted(e["resource"]["id"] for e in posted.json()["entry"])
    assert ids == sorted(e["resource"]["id"] for e in got["entry"]) == ["c1", "c3"]
    # Query and body parameters combine, as FHIR R4 allows.
    both = requests.post(
        f"{base}/Condition/_search?_id=c1,c2", data={"patient": "p2"}, timeout=10
    ).json()
    assert [e["resource"]["id"] for e in both["entry"]] == ["c1"]


def test_post_search_with_a_json_body_is_refused(cors_server: FhirTestServer) -> None:
    answer = requests.post(
        f"{cors_server.base_url}/Condition/_search", json={"patient": "p2"}, timeout=10
    )
    assert answer.status_code == 415
    assert answer.json()["resourceType"] == "OperationOutcome"
