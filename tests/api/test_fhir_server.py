"""The Medplum FHIR test server itself: what other tests rely on it to do."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.support import fhirserver
from tests.support.fhirserver import FhirTestServer, require_server

fhir_server = fhirserver.fhir_server  # pytest fixtures, used by name
fhir_store = fhirserver.fhir_store

pytestmark = pytest.mark.fhir_server

SNOMED = "http://snomed.info/sct"


def _condition(cid: str, patient: str, system: str, code: str) -> dict[str, object]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": f"Patient/{patient}"},
        "code": {"coding": [{"system": system, "code": code}]},
    }


def test_metadata_is_a_capability_statement(fhir_store: FhirTestServer) -> None:
    status, body = fhir_store.request("GET", "/metadata")
    assert status == 200
    assert body["resourceType"] == "CapabilityStatement"
    assert body["fhirVersion"] == "4.0.1"


def test_put_with_fixed_id_then_read(fhir_store: FhirTestServer) -> None:
    status, _ = fhir_store.request("PUT", "/Patient/p1", {"resourceType": "Patient", "id": "p1"})
    assert status in (200, 201)
    status, body = fhir_store.request("GET", "/Patient/p1")
    assert status == 200
    assert body["id"] == "p1"
    status, _ = fhir_store.request("GET", "/Patient/absent")
    assert status == 404


def test_token_search_by_patient_and_code_list(fhir_store: FhirTestServer) -> None:
    fhir_store.load(
        [
            {"resourceType": "Patient", "id": "p1"},
            {"resourceType": "Patient", "id": "p2"},
            _condition("c1", "p1", SNOMED, "111"),
            _condition("c2", "p1", SNOMED, "222"),
            _condition("c3", "p1", "http://example.org/other", "111"),
            _condition("c4", "p2", SNOMED, "111"),
        ]
    )
    status, body = fhir_store.request(
        "GET", f"/Condition?patient=p1&code={SNOMED}|111,{SNOMED}|333"
    )
    assert status == 200
    assert [e["resource"]["id"] for e in body["entry"]] == ["c1"]
    assert body["entry"][0]["fullUrl"].endswith("/Condition/c1")
    status, body = fhir_store.request("GET", "/Condition?patient=Patient/p1&_count=10")
    assert sorted(e["resource"]["id"] for e in body["entry"]) == ["c1", "c2", "c3"]


def test_search_pages_carry_next_links(fhir_store: FhirTestServer) -> None:
    fhir_store.load([_condition(f"c{i}", "p1", SNOMED, "111") for i in range(5)])
    seen: list[str] = []
    path: str | None = "/Condition?patient=p1&_count=2"
    pages = 0
    while path:
        status, body = fhir_store.request("GET", path)
        assert status == 200
        pages += 1
        seen += [e["resource"]["id"] for e in body.get("entry", [])]
        nxt = [link["url"] for link in body["link"] if link["relation"] == "next"]
        path = nxt[0].removeprefix(fhir_store.base_url) if nxt else None
    assert pages == 3
    assert sorted(seen) == [f"c{i}" for i in range(5)]


def test_write_is_validated(fhir_store: FhirTestServer) -> None:
    status, body = fhir_store.request(
        "PUT", "/Patient/bad", {"resourceType": "Patient", "id": "bad", "gender": 5}
    )
    assert status == 400
    assert body["resourceType"] == "OperationOutcome"
    assert fhir_store.request("GET", "/Patient/bad")[0] == 404


def test_validate_operation(fhir_store: FhirTestServer) -> None:
    good = fhir_store.validate(
        {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    )
    assert not [i for i in good["issue"] if i["severity"] == "error"]
    bad = fhir_store.validate({"resourceType": "Observation", "status": "final"})
    assert any("Observation.code" in i.get("expression", []) for i in bad["issue"])
    unknown = fhir_store.validate(
        {"resourceType": "Patient"}, profile="http://example.org/StructureDefinition/none"
    )
    assert any(i["severity"] == "error" for i in unknown["issue"])


def test_patient_search_stays_fast_with_many_resources(fhir_store: FhirTestServer) -> None:
    fhir_store.load(_condition(f"n{i}", f"q{i % 50}", SNOMED, "111") for i in range(3000))
    started = time.monotonic()
    status, body = fhir_store.request("GET", "/Condition?patient=q7&_count=1000")
    elapsed = time.monotonic() - started
    assert status == 200
    assert len(body["entry"]) == 60
    assert elapsed < 2.0


@pytest.fixture(scope="module")
def guarded_server() -> Iterator[FhirTestServer]:
    require_server()
    server = FhirTestServer(token="test-token-a").start()
    try:
        yield server
    finally:
        server.stop()


def test_bearer_token_check(guarded_server: FhirTestServer) -> None:
    assert guarded_server.request("GET", "/metadata")[0] == 200
    guarded_server.token = ""
    try:
        assert guarded_server.request("GET", "/Patient")[0] == 401
        guarded_server.token = "wrong"
        assert guarded_server.request("GET", "/Patient")[0] == 403
    finally:
        guarded_server.token = "test-token-a"


PROFILE_URL = "http://example.org/StructureDefinition/test-patient-with-gender"


def _patient_profile() -> dict[str, object]:
    """Base Patient with gender made mandatory: a real snapshot profile, built from Medplum's."""
    import json

    bundle = json.loads(
        (
            fhirserver.SERVER_DIR
            / "node_modules"
            / "@medplum"
            / "definitions"
            / "dist"
            / "fhir"
            / "r4"
            / "profiles-resources.json"
        ).read_text()
    )
    base = next(e["resource"] for e in bundle["entry"] if e["resource"].get("id") == "Patient")
    elements = [dict(el) for el in base["snapshot"]["element"]]
    for el in elements:
        if el["path"] == "Patient.gender":
            el["min"] = 1
    return {
        "resourceType": "StructureDefinition",
        "id": "test-patient-with-gender",
        "url": PROFILE_URL,
        "name": "TestPatientWithGender",
        "status": "draft",
        "kind": "resource",
        "abstract": False,
        "type": "Patient",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
        "derivation": "constraint",
        "snapshot": {"element": elements},
    }


@pytest.fixture(scope="module")
def profiled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirTestServer]:
    import json

    require_server()
    directory = tmp_path_factory.mktemp("profiles")
    (directory / "StructureDefinition-test-patient.json").write_text(json.dumps(_patient_profile()))
    server = FhirTestServer(profiles_dir=directory).start()
    try:
        yield server
    finally:
        server.stop()


def test_profiles_from_directory_are_enforced(profiled_server: FhirTestServer) -> None:
    without = {"resourceType": "Patient", "meta": {"profile": [PROFILE_URL]}}
    outcome = profiled_server.validate(without)
    assert any(i["severity"] == "error" for i in outcome["issue"])
    # The same resource passes without the profile, and with gender it passes the profile.
    plain = profiled_server.validate({"resourceType": "Patient"})
    assert not [i for i in plain["issue"] if i["severity"] == "error"]
    with_gender = profiled_server.validate(
        {"resourceType": "Patient", "gender": "female"}, profile=PROFILE_URL
    )
    assert not [i for i in with_gender["issue"] if i["severity"] == "error"]
    status, _ = profiled_server.request("PUT", "/Patient/x", {**without, "id": "x"})
    assert status == 400


# --- For browser clients: CORS and search by POST (the CDS Hooks Sandbox) -----------------------

SANDBOX = "https://sandbox.cds-hooks.org"
CORS_TOKEN = "cors-test-token"


@pytest.fixture(scope="module")
def cors_server() -> Iterator[FhirTestServer]:
    require_server()
    server = FhirTestServer(token=CORS_TOKEN, cors_origins=[SANDBOX]).start()
    server.load([_condition("c-cors", "p-cors", SNOMED, "359814004")])
    yield server
    server.stop()


def raw(
    server: FhirTestServer,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(server.base_url + path, data=body, method=method)
    for name, value in headers.items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_preflight_from_a_configured_origin_is_allowed_without_a_token(
    cors_server: FhirTestServer,
) -> None:
    status, headers, _ = raw(
        cors_server,
        "OPTIONS",
        "/Condition",
        {
            "Origin": SANDBOX,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == SANDBOX
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    assert "POST" in headers["Access-Control-Allow-Methods"]


def test_a_configured_origin_reads_with_cors_headers(cors_server: FhirTestServer) -> None:
    status, headers, body = raw(
        cors_server,
        "GET",
        "/Condition?patient=p-cors",
        {"Origin": SANDBOX, "Authorization": f"Bearer {CORS_TOKEN}"},
    )
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == SANDBOX
    assert "Origin" in headers["Vary"]
    assert b"c-cors" in body


def test_another_origin_gets_no_cors_header(cors_server: FhirTestServer) -> None:
    for method, extra in (("OPTIONS", {"Access-Control-Request-Method": "GET"}), ("GET", {})):
        status, headers, _ = raw(
            cors_server,
            method,
            "/Condition?patient=p-cors",
            {
                "Origin": "https://attacker.example",
                "Authorization": f"Bearer {CORS_TOKEN}",
                **extra,
            },
        )
        assert status in (200, 204)
        assert "Access-Control-Allow-Origin" not in headers


def test_no_origin_is_allowed_by_default(fhir_server: FhirTestServer) -> None:
    status, headers, _ = raw(
        fhir_server,
        "OPTIONS",
        "/Condition",
        {"Origin": SANDBOX, "Access-Control-Request-Method": "GET"},
    )
    assert status == 204
    assert "Access-Control-Allow-Origin" not in headers


def test_search_by_post_with_a_form_body_is_the_same_search(cors_server: FhirTestServer) -> None:
    auth = {"Authorization": f"Bearer {CORS_TOKEN}"}
    _, _, by_get = raw(cors_server, "GET", "/Condition?patient=p-cors", auth)
    status, _, by_post = raw(
        cors_server,
        "POST",
        "/Condition/_search",
        {**auth, "Content-Type": "application/x-www-form-urlencoded"},
        b"patient=p-cors",
    )
    assert status == 200
    got = json.loads(by_post)
    assert got["type"] == "searchset"
    assert [e["resource"]["id"] for e in got["entry"]] == ["c-cors"]
    expected = json.loads(by_get)
    assert [e["resource"]["id"] for e in got["entry"]] == [
        e["resource"]["id"] for e in expected["entry"]
    ]
    # Nothing matches another patient: the body's parameters are applied, not ignored.
    _, _, none = raw(
        cors_server,
        "POST",
        "/Condition/_search",
        {**auth, "Content-Type": "application/x-www-form-urlencoded"},
        b"patient=someone-else",
    )
    assert json.loads(none).get("entry", []) == []


def test_search_by_post_needs_a_form_body_and_the_token(cors_server: FhirTestServer) -> None:
    status, _, _ = raw(
        cors_server,
        "POST",
        "/Condition/_search",
        {"Authorization": f"Bearer {CORS_TOKEN}", "Content-Type": "application/json"},
        b'{"patient": "p-cors"}',
    )
    assert status == 415
    status, _, _ = raw(
        cors_server,
        "POST",
        "/Condition/_search",
        {"Content-Type": "application/x-www-form-urlencoded"},
        b"patient=p-cors",
    )
    assert status == 401
