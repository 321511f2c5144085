"""`mkopper-cds seed`: what was created or already there, and clear refusals.

The first part mocks the FHIR server with ``responses``; the tests marked
``fhir_server`` load the synthetic patients into the real FHIR test server.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses

from plugin.cli import seed
from plugin.cli.http import EXIT_REFUSED, EXIT_UNAUTHORIZED, EXIT_UNREACHABLE, EXIT_USAGE
from plugin.cli.seed import (
    DAYS_BEFORE_LOADING,
    Seeder,
    SyntheticPatient,
    as_of,
    clinical_dates,
    load_patients,
)
from tests.support import fhirserver
from tests.support.cli_support import run_command
from tests.support.clock import START, Clock
from tests.support.fhirserver import FhirTestServer, require_server

fhir_server = fhirserver.fhir_server  # pytest fixtures, used by name
fhir_store = fhirserver.fhir_store

FHIR = "http://fhir.test.example/r4"
FAMILY = "Testesen-Innhold"  # content that must never show in an error
TODAY = START.date()


def patient_bundle() -> SyntheticPatient:
    resources = [
        {"resourceType": "Patient", "id": "p1", "name": [{"family": FAMILY}]},
        {"resourceType": "Encounter", "id": "e1", "status": "in-progress"},
        {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}},
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in resources
        ],
    }
    return SyntheticPatient("p1", "test patient", bundle)


def answer(status: str, resource: dict[str, Any] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"response": {"status": status}}
    if resource is not None:
        entry["resource"] = resource
    return entry


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def test_the_summary_says_what_was_new_changed_or_already_there(
    mock: responses.RequestsMock,
) -> None:
    patient = patient_bundle()
    stored_patient = {
        **patient.entries[0]["resource"],
        "meta": {"versionId": "7", "lastUpdated": "2026-01-01T00:00:00Z"},
    }
    stored_encounter = {**patient.entries[1]["resource"], "status": "finished"}
    batch = {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [answer("200 OK", stored_patient), answer("200", stored_encounter), answer("404")],
    }
    done = {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [answer("200"), answer("200"), answer("201")],
    }
    mock.post(f"{FHIR}/", json=batch)
    mock.post(f"{FHIR}/", json=done)
    with requests.Session() as session:
        outcome = Seeder(FHIR, None, session).seed(patient)
    assert outcome.unchanged == ["Patient/p1"]
    assert outcome.updated == ["Encounter/e1"]
    assert outcome.created == ["Condition/c1"]
    assert outcome.error is None
    sent = [json.loads(c.request.body) for c in mock.calls]
    assert [e["request"]["method"] for e in sent[0]["entry"]] == ["GET"] * 3
    assert sent[1]["type"] == "transaction"


def test_without_a_batch_read_the_transaction_statuses_are_used(
    mock: responses.RequestsMock,
) -> None:
    mock.post(f"{FHIR}/", status=400, json={"resourceType": "OperationOutcome", "issue": []})
    mock.post(
        f"{FHIR}/",
        json={
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [answer("201 Created"), answer("200"), answer("200")],
        },
    )
    with requests.Session() as session:
        outcome = Seeder(FHIR, "tok", session).seed(patient_bundle())
    assert outcome.created == ["Patient/p1"]
    assert outcome.written == ["Encounter/e1", "Condition/c1"]
    assert mock.calls[1].request.headers["Authorization"] == "Bearer tok"


def test_a_refused_entry_is_named_by_type_and_id_only(mock: responses.RequestsMock) -> None:
    refusal = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "value",
                "expression": ["Bundle.entry[2].resource.subject"],
                "details": {"text": "Invalid reference"},
            }
        ],
    }
    mock.post(
        f"{FHIR}/",
        json={"resourceType": "Bundle", "type": "batch-response", "entry": [answer("404")] * 3},
    )
    mock.post(f"{FHIR}/", status=400, json=refusal)
    with requests.Session() as session:
        outcome = Seeder(FHIR, None, session).seed(patient_bundle())
    assert outcome.error is not None
    assert "Condition/c1" in outcome.error and "Invalid reference" in outcome.error
    assert "HTTP 400" in outcome.error
    assert FAMILY not in outcome.error and "Patient/p1" not in outcome.error
    assert outcome.created == []


def test_an_unplaced_refusal_is_traced_with_validate(mock: responses.RequestsMock) -> None:
    ok = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational"}],
    }
    bad = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "required",
                "expression": ["Encounter.class"],
                "details": {"text": "Missing required property"},
            }
        ],
    }
    mock.post(f"{FHIR}/", status=500, json={})  # no batch read
    mock.post(
        f"{FHIR}/",
        status=422,
        json={
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "processing"}],
        },
    )
    mock.post(f"{FHIR}/Patient/$validate", json=ok)
    mock.post(f"{FHIR}/Encounter/$validate", json=bad)
    mock.post(f"{FHIR}/Condition/$validate", json=ok)
    with requests.Session() as session:
        outcome = Seeder(FHIR, None, session).seed(patient_bundle())
    assert outcome.error == (
        "the server refused the transaction (HTTP 422); refused: Encounter/e1 "
        "(required at Encounter.class: Missing required property)"
    )


def test_the_package_holds_every_indexed_patient() -> None:
    patients = load_patients()
    ids = [p.id for p in patients]
    assert "mk-large-record" in ids and len(ids) == len(set(ids)) >= 10
    for patient in patients:
        assert patient.bundle["type"] == "transaction"
        assert all(e["request"]["method"] == "PUT" for e in patient.entries)


# --- dates relative to the day of loading -----------------------------------------------------


def _day(value: str) -> dt.date:
    return dt.date.fromisoformat(value[:10])


def _resources(patient: SyntheticPatient) -> list[dict[str, Any]]:
    return [dict(entry["resource"]) for entry in patient.entries]


def test_every_sample_date_is_a_full_date_the_loader_can_move() -> None:
    for patient in load_patients():
        written = clinical_dates(patient.bundle)
        assert written, patient.id
        assert all(seed.FULL_DATE.fullmatch(value) for value in written), patient.id


def test_every_date_in_the_samples_is_one_the_loader_moves() -> None:
    # A date under an element the loader does not know would stay behind as the others move.
    looks_like_a_date = re.compile(r"\d{4}-\d{2}-\d{2}")
    left_behind = []

    def walk(value: Any, key: str, where: str) -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                walk(item, name, where)
        elif isinstance(value, list):
            for item in value:
                walk(item, key, where)
        elif isinstance(value, str) and looks_like_a_date.match(value):
            if key not in seed.CLINICAL_DATES:
                left_behind.append(f"{where}.{key}")

    for patient in load_patients():
        for resource in _resources(patient):
            if resource["resourceType"] != "Patient":
                walk(resource, "", f"{patient.id}:{resource['resourceType']}")
    assert left_behind == []


@pytest.mark.parametrize("patient", load_patients(), ids=lambda p: p.id)
def test_the_newest_clinical_date_falls_the_stated_days_before_loading(
    patient: SyntheticPatient,
) -> None:
    written = clinical_dates(patient.bundle)
    dated = as_of(patient, TODAY)
    assert clinical_dates(patient.bundle) == written  # the loaded sample itself is not changed
    before = [_day(value) for value in written]
    after = [_day(value) for value in clinical_dates(dated.bundle)]
    assert max(after) == TODAY - dt.timedelta(days=DAYS_BEFORE_LOADING)
    # One shift for the whole patient: the order of events and the gaps between them stay.
    shift = after[0] - before[0]
    assert shift.days > 0  # the files are older than the test clock
    assert all(new - old == shift for old, new in zip(before, after, strict=True))
    # Times of day and offsets stay as written; the Patient (its birth date) does not move.
    for old_value, new_value in zip(
        clinical_dates(patient.bundle), clinical_dates(dated.bundle), strict=True
    ):
        assert old_value[10:] == new_value[10:]
    (person,) = [r for r in _resources(dated) if r["resourceType"] == "Patient"]
    (original,) = [r for r in _resources(patient) if r["resourceType"] == "Patient"]
    assert person == original and person.get("birthDate")
    assert as_of(patient, TODAY).bundle == dated.bundle  # the same day gives the same data


def _sent_transactions(mock: responses.RequestsMock) -> list[dict[str, Any]]:
    bodies = [json.loads(call.request.body) for call in mock.calls if call.request.body]
    return [body for body in bodies if body.get("type") == "transaction"]


def _mock_fhir(mock: responses.RequestsMock) -> None:
    mock.get(f"{FHIR}/metadata", json={"resourceType": "CapabilityStatement"})
    mock.post(
        f"{FHIR}/",
        json={"resourceType": "Bundle", "type": "transaction-response", "entry": []},
    )


def test_the_command_dates_the_samples_as_of_the_given_day(
    mock: responses.RequestsMock, capsys: Any
) -> None:
    _mock_fhir(mock)
    argv = ["seed", "--fhir-server", FHIR, "--patient", "mk-confirmed-lab-only"]
    code, out, err = run_command([*argv, "--as-of", "2027-02-01"], capsys)
    assert code == 0, err
    assert "dated as of 2027-02-01" in out
    (sent,) = _sent_transactions(mock)
    (observation,) = [
        e["resource"] for e in sent["entry"] if e["resource"]["resourceType"] == "Observation"
    ]
    assert observation["effectiveDateTime"].startswith("2027-01-31T")


def test_without_as_of_the_command_takes_today_from_its_clock(
    mock: responses.RequestsMock, capsys: Any
) -> None:
    _mock_fhir(mock)
    args = argparse.Namespace(
        fhir_server=FHIR, token=None, patient=["mk-confirmed-lab-only"], as_of=None
    )
    assert seed.run(args, clock=Clock()) == 0
    assert f"dated as of {TODAY.isoformat()}" in capsys.readouterr().out
    (sent,) = _sent_transactions(mock)
    assert max(_day(value) for value in clinical_dates(sent)) == TODAY - dt.timedelta(days=1)


def test_a_day_that_is_not_a_date_is_a_usage_error(capsys: Any) -> None:
    with pytest.raises(SystemExit) as stopped:
        run_command(["seed", "--fhir-server", FHIR, "--as-of", "25.11.2026"], capsys)
    assert stopped.value.code == EXIT_USAGE
    assert "not a date (YYYY-MM-DD)" in capsys.readouterr().err


def test_an_unknown_patient_is_a_usage_error(capsys: Any) -> None:
    code, _out, err = run_command(["seed", "--fhir-server", FHIR, "--patient", "nobody"], capsys)
    assert code == EXIT_USAGE
    assert "no synthetic patient nobody" in err


def test_a_server_that_is_not_a_url_is_a_usage_error(capsys: Any) -> None:
    code, _out, err = run_command(["seed", "--fhir-server", "localhost:8090"], capsys)
    assert code == EXIT_USAGE
    assert "--fhir-server" in err


def test_a_401_says_to_give_a_token(mock: responses.RequestsMock, capsys: Any) -> None:
    mock.get(f"{FHIR}/metadata", status=401)
    code, _out, err = run_command(["seed", "--fhir-server", FHIR, "--token", "wrong-tok"], capsys)
    assert code == EXIT_UNAUTHORIZED
    assert "HTTP 401" in err and "--token" in err and "wrong-tok" not in err
    assert len(mock.calls) == 1  # nothing written


def test_an_unreachable_server_exits_3(capsys: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, _out, err = run_command(["seed", "--fhir-server", f"http://127.0.0.1:{port}"], capsys)
    assert code == EXIT_UNREACHABLE
    assert "cannot connect" in err


# --- the real FHIR test server ---------------------------------------------------------------


@pytest.mark.fhir_server
def test_seeding_twice_creates_once(fhir_store: FhirTestServer, capsys: Any) -> None:
    # The server validates every write against R4: the synthetic patients pass.
    total = sum(len(p.entries) for p in load_patients())
    argv = ["seed", "--fhir-server", fhir_store.base_url, "--as-of", TODAY.isoformat()]
    code, out, err = run_command(argv, capsys)
    assert code == 0, err
    assert f"{total} created, 0 updated, 0 already there" in out
    code, out, err = run_command(argv, capsys)
    assert code == 0, err
    assert f"0 created, 0 updated, {total} already there" in out
    status, body = fhir_store.request("GET", "/Patient/mk-confirmed-inpatient")
    assert status == 200 and body["id"] == "mk-confirmed-inpatient"
    status, body = fhir_store.request("GET", "/Observation/mk-confirmed-lab-only-pcr")
    assert status == 200 and body["effectiveDateTime"].startswith("2026-11-24T")


@pytest.mark.fhir_server
def test_seeding_on_a_later_day_moves_the_dates(fhir_store: FhirTestServer, capsys: Any) -> None:
    argv = ["seed", "--fhir-server", fhir_store.base_url, "--patient", "mk-confirmed-lab-only"]
    code, out, err = run_command([*argv, "--as-of", TODAY.isoformat()], capsys)
    assert code == 0, err
    code, out, err = run_command([*argv, "--as-of", "2026-12-25"], capsys)
    assert code == 0, err
    # The Patient stays; its Encounter and Observation carry dates and move a month on.
    assert "0 created, 2 updated, 1 already there" in out
    status, body = fhir_store.request("GET", "/Observation/mk-confirmed-lab-only-pcr")
    assert status == 200 and body["effectiveDateTime"].startswith("2026-12-24T")


@pytest.mark.fhir_server
def test_a_refusing_server_names_the_resources(
    fhir_store: FhirTestServer, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = patient_bundle()
    broken.entries[1]["resource"]["status"] = "not-a-status"  # refused by R4 validation
    monkeypatch.setattr("plugin.cli.seed.load_patients", lambda _only=None: [broken])
    code, _out, err = run_command(["seed", "--fhir-server", fhir_store.base_url], capsys)
    assert code == EXIT_REFUSED
    assert "p1: the server refused the transaction (HTTP 400)" in err
    assert "Encounter/e1" in err
    assert "Patient/p1" not in err and "Condition/c1" not in err
    assert FAMILY not in err
    status, _ = fhir_store.request("GET", "/Patient/p1")
    assert status == 404  # the transaction stored nothing


@pytest.mark.fhir_server
def test_a_guarded_server_needs_the_token(capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    require_server()
    server = FhirTestServer(token="seed-token").start()
    try:
        argv = ["seed", "--fhir-server", server.base_url, "--patient", "mk-control"]
        code, _out, err = run_command(argv, capsys)
        assert code == EXIT_UNAUTHORIZED, err
        monkeypatch.setenv("CDS_FHIR_TOKEN", "seed-token")
        code, out, err = run_command(argv, capsys)
        assert code == 0, err
        assert "5 created" in out
    finally:
        server.stop()
