"""Feedback suppression: keyed hashes, expiry, rotation, and two instances over one database."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from cds_hooks.knowledge import load_knowledge
from cds_hooks.models import Card, Coding, HookRequest, Source
from cds_hooks.services import (
    CdsService,
    Evaluation,
    PrefetchData,
    ServiceRegistry,
    StaticCard,
)
from plugin.config import load_settings
from plugin.storage.suppression import (
    KEY_FILE,
    PatientHasher,
    Policy,
    hasher_from_settings,
    policy_from_knowledge,
    subject_of,
)
from tests.support.clock import START, Clock
from tests.support.service_process import fresh_schema, postgres_url

SERVICE = "sup-view"
SECRET = "a" * 32
OTHER_SECRET = "b" * 32
# The override reasons a test card offers unless the request names others (testReasons).
OFFERED = sorted(load_knowledge().content.override_reasons)


def _evaluate(request: HookRequest, data: PrefetchData) -> Evaluation:
    """Stands in for the guideline: the findings and the status come from the test's context."""
    findings: Sequence[str] = request.context.get("testFindings") or []
    return Evaluation(
        issued=[
            StaticCard(
                card=Card(
                    summary=f"card {finding}",
                    indicator="warning",
                    source=Source(label="test", topic=Coding(code=finding, system="urn:test")),
                    overrideReasons=[
                        Coding(code=code, system="urn:test", display=code)
                        for code in request.context.get("testReasons", OFFERED)
                    ],
                ),
                finding=finding,
            )
            for finding in findings
        ],
        status=request.context.get("testStatus"),
    )


def suppression_registry() -> ServiceRegistry:
    return ServiceRegistry(
        [
            CdsService(
                id=SERVICE,
                hook="patient-view",
                title="Suppression test",
                description="Cards named in the request context.",
                prefetch={},
                evaluate=_evaluate,
            )
        ]
    )


def content_policy(**changes: Any) -> Policy:
    """The override reasons and hours of the shipped content, with test flags for kinds."""
    policy = policy_from_knowledge(load_knowledge())
    return Policy(
        reason_hours=policy.reason_hours,
        per_encounter=frozenset(changes.get("per_encounter", ())),
        status_bound=frozenset(changes["status_bound"]) if "status_bound" in changes else None,
        reason_labels=policy.reason_labels,
        kind_labels=policy.kind_labels,
    )


def make_suppression_app(make_app: Any, clock: Clock, **overrides: Any) -> Flask:
    flags = {
        key: overrides.pop(key) for key in ("per_encounter", "status_bound") if key in overrides
    }
    config: dict[str, Any] = {
        "CDS_CLOCK": clock,
        "CDS_REGISTRY": suppression_registry(),
        "CDS_SUPPRESSION_POLICY": content_policy(**flags),
    }
    config.update(overrides)
    app: Flask = make_app(**config)
    return app


def call(
    client: FlaskClient,
    findings: Sequence[str],
    *,
    patient: str = "pat-1",
    encounter: str | None = None,
    status: str | None = "suspected",
) -> dict[str, str]:
    """Call the service; the cards answered, as {topic code: card uuid}."""
    context: dict[str, Any] = {
        "userId": "Practitioner/1",
        "patientId": patient,
        "testFindings": list(findings),
        "testStatus": status,
    }
    if encounter:
        context["encounterId"] = encounter
    body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()), "context": context}
    response = client.post(f"/cds-services/{SERVICE}", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return {card["source"]["topic"]["code"]: card["uuid"] for card in response.get_json()["cards"]}


def feedback(
    client: FlaskClient, card_uuid: str, reason: str, outcome: str = "overridden"
) -> dict[str, Any]:
    """Post one outcome (an override with ``reason``, or an acceptance); the answer's counts."""
    item: dict[str, Any] = {
        "card": card_uuid,
        "outcome": outcome,
        "outcomeTimestamp": "2026-11-25T10:15:00Z",
    }
    if outcome == "overridden":
        item["overrideReason"] = {
            "reason": {"code": reason, "system": "urn:test", "display": reason},
            "userComment": "pat-1 called",
        }
    response = client.post(f"/cds-services/{SERVICE}/feedback", json={"feedback": [item]})
    assert response.status_code == 200, response.get_data(as_text=True)
    answer: dict[str, Any] = response.get_json()
    return answer


def override(client: FlaskClient, card_uuid: str, reason: str, outcome: str = "overridden") -> None:
    feedback(client, card_uuid, reason, outcome)


def dump_database(app: Flask) -> str:
    """Every value in every table, as text (to look for what must never be stored)."""
    engine = app.extensions["cds_store"].engine
    text = []
    with engine.connect() as conn:
        for table in sa.inspect(engine).get_table_names():
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                text.append(" ".join(str(value) for value in row))
    return "\n".join(text)


# --- Behaviour through HTTP -------------------------------------------------------------------


def test_override_suppresses_only_that_kind_for_that_patient(make_app: Any) -> None:
    clock = Clock(START)
    client = make_suppression_app(make_app, clock).test_client()
    cards = call(client, ["notify-municipal-doctor", "isolation-inpatient"])
    override(client, cards["isolation-inpatient"], "measures-in-place")

    clock.now += timedelta(hours=1)
    assert set(call(client, ["notify-municipal-doctor", "isolation-inpatient"])) == {
        "notify-municipal-doctor"
    }
    assert set(call(client, ["isolation-inpatient"], patient="pat-2")) == {"isolation-inpatient"}


def test_reason_without_hours_and_accepted_cards_do_not_suppress(make_app: Any) -> None:
    clock = Clock(START)
    client = make_suppression_app(make_app, clock).test_client()
    cards = call(client, ["notify-municipal-doctor", "respirator"])
    override(client, cards["notify-municipal-doctor"], "not-relevant-for-contact")
    override(client, cards["respirator"], "", outcome="accepted")
    assert set(call(client, ["notify-municipal-doctor", "respirator"])) == {
        "notify-municipal-doctor",
        "respirator",
    }


def test_unknown_reason_code_and_unknown_card_do_not_suppress(make_app: Any) -> None:
    clock = Clock(START)
    app = make_suppression_app(make_app, clock)
    client = app.test_client()
    cards = call(client, ["respirator"])
    override(client, cards["respirator"], "made-up-reason")
    override(client, "no-such-card", "already-notified")
    assert set(call(client, ["respirator"])) == {"respirator"}
    assert app.extensions["cds_suppression"].active_count() == 0


def test_override_through_one_instance_suppresses_in_the_other(make_app: Any) -> None:
    clock = Clock(START)
    first = make_suppression_app(make_app, clock).test_client()
    second = make_suppression_app(make_app, clock).test_client()
    cards = call(first, ["notify-municipal-doctor"])
    override(second, cards["notify-municipal-doctor"], "already-notified")
    assert call(first, ["notify-municipal-doctor"]) == {}
    assert call(second, ["notify-municipal-doctor"]) == {}


@pytest.mark.postgres
def test_two_instances_over_postgresql(make_app: Any) -> None:
    url = os.environ.get("CDS_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must provide CDS_TEST_POSTGRES_URL")
        pytest.skip("CDS_TEST_POSTGRES_URL is not set")
    clock = Clock(START)
    patient = f"pat-{uuid.uuid4()}"  # the database outlives the test: a patient of its own
    settings = {"CDS_DATABASE_URL": url, "CDS_PATIENT_HASH_SECRET": SECRET}
    first = make_suppression_app(make_app, clock, **settings).test_client()
    second = make_suppression_app(make_app, clock, **settings).test_client()
    cards = call(first, ["isolation-inpatient"], patient=patient)
    override(second, cards["isolation-inpatient"], "measures-in-place")
    assert call(first, ["isolation-inpatient"], patient=patient) == {}
    clock.now += timedelta(hours=25)
    assert set(call(second, ["isolation-inpatient"], patient=patient)) == {"isolation-inpatient"}


def test_no_patient_or_encounter_id_is_stored(make_app: Any) -> None:
    clock = Clock(START)
    app = make_suppression_app(make_app, clock, per_encounter=("isolation-inpatient",))
    client = app.test_client()
    cards = call(client, ["isolation-inpatient"], patient="pasient-4711", encounter="kontakt-0815")
    override(client, cards["isolation-inpatient"], "measures-in-place")
    assert app.extensions["cds_suppression"].active_count() == 1
    stored = dump_database(app)
    assert "pasient-4711" not in stored
    assert "kontakt-0815" not in stored


def test_expired_suppressions_are_deleted_on_write(make_app: Any) -> None:
    clock = Clock(START)
    app = make_suppression_app(make_app, clock)
    client = app.test_client()
    cards = call(client, ["isolation-inpatient", "respirator"])
    override(client, cards["isolation-inpatient"], "measures-in-place")
    engine = app.extensions["cds_store"].engine

    def rows() -> int:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM suppressions")).scalar_one())

    assert rows() == 1
    clock.now += timedelta(hours=25)
    later = call(client, ["respirator"])
    override(client, later["respirator"], "not-relevant-for-contact")
    assert rows() == 0


def test_feedback_past_the_card_retention_is_unknown(make_app: Any) -> None:
    clock = Clock(START)
    app = make_suppression_app(make_app, clock)
    client = app.test_client()
    cards = call(client, ["respirator", "isolation-inpatient"])
    # Seven days after the call the card's uuid still opens; a second later it does not.
    clock.now += timedelta(days=7)
    assert feedback(client, cards["respirator"], "measures-in-place")["recorded"] == 1
    assert app.extensions["cds_suppression"].active_count() == 1
    clock.now += timedelta(seconds=1)
    answer = feedback(client, cards["isolation-inpatient"], "measures-in-place")
    assert answer == {"received": 1, "recorded": 0, "duplicates": 0, "unknown": 1}
    assert app.extensions["cds_suppression"].active_count() == 1
    assert "isolation-inpatient" in call(client, ["isolation-inpatient"])


def test_latest_override_decides_the_time(make_app: Any) -> None:
    clock = Clock(START)
    client = make_suppression_app(make_app, clock).test_client()
    first = call(client, ["respirator"])
    # A second card of the same kind, shown before the first was overridden (another hook),
    # is overridden later, through another instance, with a shorter time (the test cards
    # offer every reason of the content).
    second = call(client, ["respirator"])
    override(client, first["respirator"], "already-notified")
    other_instance = make_suppression_app(make_app, clock).test_client()
    clock.now += timedelta(hours=1)
    override(other_instance, second["respirator"], "measures-in-place")
    clock.now += timedelta(hours=24)
    assert set(call(client, ["respirator"])) == {"respirator"}


# --- The keyed hash -----------------------------------------------------------------------------


def test_generated_key_is_private_and_kept(tmp_path: Path) -> None:
    settings = {"CDS_DATA_DIR": str(tmp_path), "CDS_PATIENT_HASH_SECRET": ""}
    first = hasher_from_settings(load_settings({}, settings))
    key_file = tmp_path / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    again = hasher_from_settings(load_settings({}, settings))
    assert first.hash("patient", "p1") == again.hash("patient", "p1")
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]


def test_hash_depends_on_key_and_domain() -> None:
    one = PatientHasher([SECRET.encode()])
    other = PatientHasher([OTHER_SECRET.encode()])
    assert one.hash("patient", "p1") != other.hash("patient", "p1")
    assert one.hash("patient", "p1") != one.hash("encounter", "p1")
    assert len(one.hash("patient", "p1")) == 64
    assert "p1" not in one.hash("patient", "p1")


def test_short_secret_is_refused_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CDS_PATIENT_HASH_SECRET") as info:
        hasher_from_settings(
            load_settings({}, {"CDS_DATA_DIR": str(tmp_path), "CDS_PATIENT_HASH_SECRET": "short1"})
        )
    assert "short1" not in str(info.value)


def test_rotation_keeps_suppressions_made_under_the_old_secret(make_app: Any) -> None:
    clock = Clock(START)
    old = make_suppression_app(make_app, clock, CDS_PATIENT_HASH_SECRET=SECRET).test_client()
    cards = call(old, ["notify-municipal-doctor"])
    override(old, cards["notify-municipal-doctor"], "already-notified")

    rotated = make_suppression_app(
        make_app, clock, CDS_PATIENT_HASH_SECRET=f"{OTHER_SECRET},{SECRET}"
    ).test_client()
    assert call(rotated, ["notify-municipal-doctor"]) == {}
    # Without the old secret the old records are no longer recognised: the card shows again.
    replaced = make_suppression_app(
        make_app, clock, CDS_PATIENT_HASH_SECRET=OTHER_SECRET
    ).test_client()
    assert set(call(replaced, ["notify-municipal-doctor"])) == {"notify-municipal-doctor"}


THIRD_SECRET = "c" * 32


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The settings of a database: SQLite in the data directory, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield {}
        return
    with fresh_schema(postgres_url()) as url:
        yield {"CDS_DATABASE_URL": url}


def test_suppressions_are_found_under_every_secret_of_a_rotation(
    make_app: Any, database: dict[str, str]
) -> None:
    clock = Clock(START)

    def app_with(secrets: str) -> FlaskClient:
        settings = {"CDS_PATIENT_HASH_SECRET": secrets, **database}
        return make_suppression_app(make_app, clock, **settings).test_client()

    old = app_with(SECRET)
    cards = call(old, ["notify-municipal-doctor", "isolation-inpatient"])
    override(old, cards["notify-municipal-doctor"], "already-notified")
    rotated = app_with(f"{OTHER_SECRET},{SECRET}")
    cards = call(rotated, ["isolation-inpatient", "respirator"])
    override(rotated, cards["isolation-inpatient"], "measures-in-place")

    everything = ["notify-municipal-doctor", "isolation-inpatient", "respirator"]
    # One record under the old secret, one under the new: two keys and three find both.
    for client in (rotated, app_with(f"{THIRD_SECRET},{OTHER_SECRET},{SECRET}")):
        assert set(call(client, everything)) == {"respirator"}
        # The patient's records of other kinds do not hide a card called alone.
        assert set(call(client, ["respirator"])) == {"respirator"}
        assert set(call(client, everything, patient="pat-2")) == set(everything)
    # One key finds what was made under it only.
    assert set(call(app_with(OTHER_SECRET), everything)) == {
        "notify-municipal-doctor",
        "respirator",
    }
    assert set(call(old, everything)) == {"isolation-inpatient", "respirator"}


def test_new_records_use_the_first_secret(tmp_path: Path) -> None:
    hasher = hasher_from_settings(
        load_settings(
            {},
            {"CDS_DATA_DIR": str(tmp_path), "CDS_PATIENT_HASH_SECRET": f"{OTHER_SECRET},{SECRET}"},
        )
    )
    assert hasher.hash("patient", "p1") == PatientHasher([OTHER_SECRET.encode()]).hash(
        "patient", "p1"
    )
    assert hasher.candidates("patient", "p1")[1] == PatientHasher([SECRET.encode()]).hash(
        "patient", "p1"
    )


@pytest.mark.parametrize(
    ("fhir_server", "key"),
    [
        ("https://fhir.example.org/r4", "https://fhir.example.org:443/r4"),
        ("https://fhir.example.org/r4/", "https://fhir.example.org:443/r4"),
        ("http://fhir.example.org:8080/r4", "http://fhir.example.org:8080/r4"),
        # Not a plain base (a query): a call without fetching keeps the text as given.
        ("https://fhir.example.org/r4?x=1", "https://fhir.example.org/r4?x=1"),
    ],
)
def test_the_fhir_server_is_part_of_the_subject_in_one_form(fhir_server: str, key: str) -> None:
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": fhir_server,
        "context": {"userId": "Practitioner/1", "patientId": "pat-1"},
    }
    # The second call reads the server's form as the first did.
    for _ in range(2):
        subject = subject_of(HookRequest.model_validate(body), Evaluation(status="suspected"))
        assert (subject.patient, subject.fhir_server, subject.status) == ("pat-1", key, "suspected")


def test_a_read_that_fails_is_the_storage_error_not_a_500(
    make_app: Any, database: dict[str, str]
) -> None:
    app = make_suppression_app(make_app, Clock(START), **database)
    client = app.test_client()
    assert set(call(client, ["respirator"])) == {"respirator"}
    with app.extensions["cds_store"].engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE suppressions RENAME TO suppressions_gone"))
    try:
        body = {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "context": {"patientId": "pat-1", "testFindings": ["respirator"]},
        }
        response = client.post(f"/cds-services/{SERVICE}", json=body)
        assert response.status_code == 503
        assert response.get_json()["error"]["code"] == "storage-unavailable"
    finally:
        with app.extensions["cds_store"].engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE suppressions_gone RENAME TO suppressions"))
    assert set(call(client, ["respirator"])) == {"respirator"}


# --- The policy from content ----------------------------------------------------------------


def test_policy_reads_hours_from_content() -> None:
    knowledge = load_knowledge()
    policy = policy_from_knowledge(knowledge)
    for code, reason in knowledge.content.override_reasons.items():
        assert policy.hours_for(code) == reason.suppress_hours
        assert policy.reason_labels is not None
        assert policy.reason_labels[code] == reason.display.nb
    assert policy.hours_for("no-such-reason") == 0
    assert policy.hours_for(None) == 0


def test_policy_reads_kind_flags_from_content() -> None:
    knowledge = load_knowledge()
    findings = knowledge.content.findings
    policy = policy_from_knowledge(knowledge)
    per_encounter = {key for key, finding in findings.items() if finding.suppress_per_encounter}
    assert per_encounter  # the shipped content has per-encounter kinds
    assert policy.per_encounter == per_encounter
    # Unless the content says otherwise, every kind comes back when the status changes.
    assert all(policy.is_status_bound(key) for key in findings)

    key = sorted(findings)[0]
    changed = findings[key].model_copy(update={"resurface_on_status_change": False})
    content = knowledge.content.model_copy(update={"findings": {**findings, key: changed}})
    edited = policy_from_knowledge(replace(knowledge, content=content))
    assert not edited.is_status_bound(key)
    assert all(edited.is_status_bound(other) for other in findings if other != key)


def test_content_is_loaded_once_for_registry_policy_and_page(
    make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import plugin
    from cds_hooks.knowledge import load_knowledge

    loads: list[object] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        knowledge = load_knowledge(*args, **kwargs)
        loads.append(knowledge)
        return knowledge

    monkeypatch.setattr(plugin, "load_knowledge", counting)
    app = make_app()
    assert len(loads) == 1
    (knowledge,) = loads
    # The suppression policy and the SMART page read that one copy.
    assert app.extensions["smart_content"] is knowledge.content  # type: ignore[attr-defined]
    policy = app.extensions["cds_suppression"].policy
    assert policy == policy_from_knowledge(knowledge)  # type: ignore[arg-type]
    client = app.test_client()
    service = app.extensions["cds_registry"].get("mkopper-patient-view")
    empty = {"resourceType": "Bundle", "type": "searchset", "entry": []}
    body = {
        "hook": "patient-view",
        "hookInstance": "h",
        "context": {"patientId": "p", "userId": "Practitioner/1"},
        "prefetch": {key: empty for key in service.prefetch},
    }
    response = client.post("/cds-services/mkopper-patient-view", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert len(loads) == 1


def test_purge_command_deletes_expired_records(make_app: Any, tmp_path: Path, capsys: Any) -> None:
    import argparse

    from plugin.cli import purge

    clock = Clock(START)
    app = make_suppression_app(make_app, clock)
    client = app.test_client()
    cards = call(client, ["notify-municipal-doctor", "respirator"])
    override(client, cards["notify-municipal-doctor"], "already-notified")
    override(client, cards["respirator"], "measures-in-place")
    assert app.extensions["cds_suppression"].active_count() == 2

    env = {"CDS_DATA_DIR": str(tmp_path), "CDS_DATABASE_URL": "", "CDS_PATIENT_HASH_SECRET": ""}
    later = Clock(START + timedelta(hours=30))
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        assert purge.run(argparse.Namespace(), clock=later) == 0
    assert "deleted 1 expired record(s)" in capsys.readouterr().out
    # The 720-hour suppression is still there; the 24-hour one, 30 hours old, is gone.
    clock.now = later.now
    assert app.extensions["cds_suppression"].active_count() == 1


def test_purge_command_runs_from_the_command_line(tmp_path: Path, capsys: Any) -> None:
    from plugin.cli.main import main

    env = {"CDS_DATA_DIR": str(tmp_path), "CDS_DATABASE_URL": "", "CDS_PATIENT_HASH_SECRET": ""}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        assert main(["purge-suppressions"]) == 0
    assert "deleted 0 expired record(s)" in capsys.readouterr().out


def test_concurrent_calls_and_overrides_over_two_instances(make_app: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    clock = Clock(START)
    apps = [make_suppression_app(make_app, clock) for _ in range(2)]

    def work(number: int) -> set[str]:
        client = apps[number % 2].test_client()
        patient = f"pat-{number % 3}"
        cards = call(client, ["notify-municipal-doctor", "respirator"], patient=patient)
        if "notify-municipal-doctor" in cards:
            override(client, cards["notify-municipal-doctor"], "already-notified")
        return set(call(client, ["notify-municipal-doctor", "respirator"], patient=patient))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(24)))
    # Every worker's own override holds for its next call, whatever the others did meanwhile.
    assert all(result == {"respirator"} for result in results)
    assert apps[0].extensions["cds_suppression"].active_count() == 3


def _no_uuid(request: HookRequest, data: PrefetchData) -> Evaluation:
    card = Card(uuid=None, summary="x", indicator="info", source=Source(label="t"))
    return Evaluation([StaticCard(card=card, finding="respirator")], status="suspected")


def test_cards_without_uuid_are_shown_and_counted_without_one(make_app: Any) -> None:
    registry = ServiceRegistry(
        [
            CdsService(
                id="no-uuid",
                hook="patient-view",
                title="t",
                description="d",
                prefetch={},
                evaluate=_no_uuid,
            )
        ]
    )
    app = make_suppression_app(make_app, Clock(START), CDS_REGISTRY=registry)
    body = {"hook": "patient-view", "hookInstance": "h", "context": {"patientId": "p"}}
    response = app.test_client().post("/cds-services/no-uuid", json=body)
    assert response.status_code == 200
    (card,) = response.get_json()["cards"]
    assert "uuid" not in card
    assert app.extensions["cds_issued_counts"].pending() == 1
