"""Card uuids as sealed tokens: a call writes nothing, feedback joins by opening the uuid."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from cds_hooks.models import MAX_CARD_UUID_CHARS
from cds_hooks.services import CdsService, ServiceRegistry
from plugin.storage.suppression import PatientHasher, Subject
from plugin.storage.token import CardRecord, CardTokens
from tests.storage.test_suppression import (
    OTHER_SECRET,
    SECRET,
    SERVICE,
    _evaluate,
    call,
    feedback,
    make_suppression_app,
)
from tests.support.clock import START, Clock

WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")


@contextmanager
def statements(app: Flask) -> Iterator[list[str]]:
    """The SQL statements SQLite runs for this thread meanwhile, as the driver sees them (the
    call's read goes to the DBAPI connection past SQLAlchemy's events), but the pool's ping at
    checkout; the issued-card writer thread of the process is not counted: it runs off the
    request."""
    engine = app.extensions["cds_store"].engine
    seen: list[str] = []
    me = threading.get_ident()
    watching = True

    def trace(statement: str) -> None:
        if watching and threading.get_ident() == me and statement.strip() != "SELECT 1":
            seen.append(statement.lstrip().split(None, 1)[0].upper())

    def checkout(dbapi_connection: Any, *_args: Any) -> None:
        dbapi_connection.set_trace_callback(trace)

    sa.event.listen(engine, "checkout", checkout)
    try:
        yield seen
    finally:
        watching = False
        sa.event.remove(engine, "checkout", checkout)


def record(**changes: Any) -> CardRecord:
    values: dict[str, Any] = {
        "finding": "notify-municipal-doctor",
        "kind": "notify-municipal-doctor",
        "patient_hash": "ab" * 32,
        "encounter_hash": "",
        "status": "suspected",
        "reasons": ("already-notified", "not-relevant-for-contact"),
        "issued_at": START,
    }
    values.update(changes)
    return CardRecord(**values)


def tokens(*secrets: str) -> CardTokens:
    return CardTokens([secret.encode() for secret in secrets or (SECRET,)], timedelta(days=7))


# --- The hot path writes nothing ---------------------------------------------------------------


def test_a_card_call_writes_nothing_and_reads_once(make_app: Any) -> None:
    app = make_suppression_app(make_app, Clock(START))
    client = app.test_client()
    call(client, ["respirator"])  # the first call opens the connection pool
    with statements(app) as during_call:
        cards = call(client, ["notify-municipal-doctor", "isolation-inpatient"])
    assert len(cards) == 2
    assert during_call == ["SELECT"]  # the active suppressions, nothing else
    # The same counter sees the feedback's write: it can fail.
    with statements(app) as during_feedback:
        assert feedback(client, cards["isolation-inpatient"], "measures-in-place")["recorded"]
    assert [s for s in during_feedback if s in WRITES]
    assert "INSERT" in during_feedback


def test_a_call_without_a_patient_does_not_touch_the_database(make_app: Any) -> None:
    # A service whose hook needs no patient in its context.
    registry = ServiceRegistry(
        [
            CdsService(
                id=SERVICE,
                hook="patient-view",
                title="t",
                description="d",
                prefetch={},
                evaluate=_evaluate,
                required_context=(),
            )
        ]
    )
    app = make_suppression_app(make_app, Clock(START), CDS_REGISTRY=registry)
    client = app.test_client()
    body = {
        "hook": "patient-view",
        "hookInstance": "h",
        "context": {"testFindings": ["respirator"], "testStatus": "suspected"},
    }
    with statements(app) as seen:
        response = client.post(f"/cds-services/{SERVICE}", json=body)
    assert response.status_code == 200
    assert len(response.get_json()["cards"]) == 1
    assert seen == []


def test_cards_shown_are_counted_behind_and_written_by_a_flush(make_app: Any) -> None:
    app = make_suppression_app(make_app, Clock(START))
    client = app.test_client()
    counts = app.extensions["cds_issued_counts"]
    counts.flush()
    call(client, ["notify-municipal-doctor", "respirator"])
    call(client, ["respirator"], patient="pat-2")
    assert counts.pending() == 3
    assert counts.flush() == 3
    assert counts.pending() == 0
    call(client, ["respirator"], patient="pat-3")
    assert counts.flush() == 1
    with app.extensions["cds_store"].engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT day, service_id, kind, count FROM issued_counts ORDER BY kind")
        ).all()
    day = START.date().isoformat()
    assert [(str(d)[:10], s, k, n) for d, s, k, n in rows] == [
        (day, SERVICE, "notify-municipal-doctor", 1),
        (day, SERVICE, "respirator", 3),
    ]


def test_a_failed_flush_keeps_its_counts(make_app: Any) -> None:
    app = make_suppression_app(make_app, Clock(START))
    client = app.test_client()
    counts = app.extensions["cds_issued_counts"]
    call(client, ["respirator"])
    engine = app.extensions["cds_store"].engine
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE issued_counts RENAME TO issued_counts_away"))
    assert counts.flush() == 0
    assert counts.pending() == 1
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE issued_counts_away RENAME TO issued_counts"))
    assert counts.flush() == 1


# --- What a token holds and hides -------------------------------------------------------------


def test_the_token_hides_ids_hashes_and_codes(make_app: Any) -> None:
    app = make_suppression_app(
        make_app,
        Clock(START),
        per_encounter=("isolation-inpatient",),
        CDS_PATIENT_HASH_SECRET=SECRET,
    )
    client = app.test_client()
    cards = call(client, ["isolation-inpatient"], patient="pasient-4711", encounter="kontakt-0815")
    token = cards["isolation-inpatient"]
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    hasher = PatientHasher([SECRET.encode()])
    subject = Subject("pasient-4711", "kontakt-0815", "suspected")
    patient_hash = hasher.hash("patient", subject.scoped("pasient-4711"))
    encounter_hash = hasher.hash("encounter", subject.scoped("kontakt-0815"))
    for text in (token, raw.decode("latin-1")):
        for secret in ("pasient-4711", "kontakt-0815", "4711", "isolation", "measures"):
            assert secret not in text
    for digest in (patient_hash, encounter_hash):
        assert digest not in token
        assert bytes.fromhex(digest) not in raw
        assert bytes.fromhex(digest)[:8] not in raw
    # What the token carried is what a suppression needs: the hashes as the table keeps them.
    opened = app.extensions["cds_suppression"].tokens.open(token, SERVICE, "", START)
    assert opened.patient_hash == patient_hash
    assert opened.encounter_hash == encounter_hash
    assert opened.kind == "isolation-inpatient"
    assert opened.status == "suspected"


def test_token_length_for_the_shipped_cards() -> None:
    sealer = tokens()
    notification = sealer.seal(record(), "mkopper-patient-view", "https://ehr.example\x1f")
    per_encounter = sealer.seal(
        record(finding="isolation-inpatient", kind="isolation-inpatient", encounter_hash="cd" * 32),
        "mkopper-patient-view",
        "",
    )
    # 1 + 12 nonce + 16 tag + 5 + 32 patient hash + 24 + 10 + 42 texts = 142 bytes.
    assert len(notification) == 190
    assert len(per_encounter) < 240
    worst = sealer.seal(
        record(
            finding="f" * 300,
            kind="k" * 300,
            encounter_hash="cd" * 32,
            status="s" * 50,
            reasons=tuple("r" * 40 for _ in range(20)),
        ),
        "svc",
        "",
    )
    assert len(worst) <= 770 < MAX_CARD_UUID_CHARS
    assert sealer.open(worst, "svc", "", START) is not None


def test_each_card_gets_its_own_token() -> None:
    sealer = tokens()
    assert sealer.seal(record(), "svc", "") != sealer.seal(record(), "svc", "")


# --- What does not open ----------------------------------------------------------------------


def _variants(token: str) -> list[str]:
    middle = len(token) // 2
    flip = "A" if token[middle] != "A" else "B"
    last = "A" if token[-1] != "A" else "B"
    return [
        token[:middle] + flip + token[middle + 1 :],  # a changed character
        token[:-1] + last,  # the tag changed
        token[:-1],  # cut short
        token + "A",  # one more character
        token + "==",  # padding: not the canonical text
        token[:middle] + "!" + token[middle:],  # a character the decoder would skip
        token[:middle] + "\n" + token[middle:],
        "B" + token[1:],  # another version byte (0x05; "AQ" kept it 0x01 and could equal the token)
        "",
        "x",
        "é" * 20,
        "\udcff" * 5,
    ]


def test_a_tampered_token_opens_to_nothing() -> None:
    sealer = tokens()
    token = sealer.seal(record(), "svc", "caller")
    assert sealer.open(token, "svc", "caller", START) == record()
    for variant in _variants(token):
        assert sealer.open(variant, "svc", "caller", START) is None, repr(variant)


def test_a_token_opens_only_for_its_service_and_caller() -> None:
    sealer = tokens()
    token = sealer.seal(record(), "svc", "https://ehr-one.example\x1f")
    assert sealer.open(token, "svc", "https://ehr-one.example\x1f", START) is not None
    assert sealer.open(token, "svc", "https://ehr-two.example\x1f", START) is None
    assert sealer.open(token, "svc", "https://ehr-one.example\x1ftenant-b", START) is None
    assert sealer.open(token, "svc", "", START) is None
    assert sealer.open(token, "other-svc", "https://ehr-one.example\x1f", START) is None


def test_a_token_expires_with_the_retention() -> None:
    sealer = tokens()
    token = sealer.seal(record(), "svc", "")
    assert sealer.open(token, "svc", "", START + timedelta(days=7)) is not None
    assert sealer.open(token, "svc", "", START + timedelta(days=7, seconds=1)) is None


def test_tampered_uuids_over_http_are_unknown_and_change_nothing(make_app: Any) -> None:
    app = make_suppression_app(make_app, Clock(START))
    client = app.test_client()
    cards = call(client, ["isolation-inpatient"])
    token = cards["isolation-inpatient"]
    for variant in _variants(token)[:9]:
        if not variant:
            continue
        answer = feedback(client, variant, "measures-in-place")
        assert answer == {"received": 1, "recorded": 0, "duplicates": 0, "unknown": 1}
    assert app.extensions["cds_suppression"].active_count() == 0
    with app.extensions["cds_store"].engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM feedback")).scalar_one() == 0
    # The real one still counts, once.
    assert feedback(client, token, "measures-in-place")["recorded"] == 1
    assert feedback(client, token, "measures-in-place")["duplicates"] == 1
    assert call(client, ["isolation-inpatient"]) == {}


# --- Rotation ---------------------------------------------------------------------------------


def test_a_card_issued_under_the_old_key_joins_after_rotation(make_app: Any) -> None:
    clock = Clock(START)
    old = make_suppression_app(make_app, clock, CDS_PATIENT_HASH_SECRET=SECRET).test_client()
    cards = call(old, ["notify-municipal-doctor", "isolation-inpatient"])

    rotated_app = make_suppression_app(
        make_app, clock, CDS_PATIENT_HASH_SECRET=f"{OTHER_SECRET},{SECRET}"
    )
    rotated = rotated_app.test_client()
    answer = feedback(rotated, cards["notify-municipal-doctor"], "already-notified")
    assert answer["recorded"] == 1
    assert rotated_app.extensions["cds_suppression"].active_count() == 1
    # The suppression is keyed under the old key's patient hash, which both still recognise.
    assert set(call(rotated, ["notify-municipal-doctor"])) == set()
    assert set(call(old, ["notify-municipal-doctor"])) == set()
    # New cards are sealed under the new key: the old key alone cannot open them.
    new_card = call(rotated, ["isolation-inpatient"])["isolation-inpatient"]
    assert feedback(old, new_card, "measures-in-place")["unknown"] == 1
    # Without the old key its cards are unknown.
    replaced = make_suppression_app(
        make_app, clock, CDS_PATIENT_HASH_SECRET=OTHER_SECRET
    ).test_client()
    answer = feedback(replaced, cards["isolation-inpatient"], "measures-in-place")
    assert answer["unknown"] == 1


@pytest.mark.parametrize("outcome", ["accepted", "overridden"])
def test_feedback_from_another_caller_is_not_applied_over_http(make_app: Any, outcome: str) -> None:
    # Unsigned calls are one caller (""); a token sealed for a signed caller does not open
    # for them (tests/security/test_tenants.py shows it between two signed EHRs).
    app = make_suppression_app(make_app, Clock(START))
    sealed = app.extensions["cds_suppression"].tokens.seal(
        record(finding="isolation-inpatient", kind="isolation-inpatient"),
        SERVICE,
        "https://ehr.example\x1f",
    )
    answer = feedback(app.test_client(), sealed, "measures-in-place", outcome)
    assert answer == {"received": 1, "recorded": 0, "duplicates": 0, "unknown": 1}
    assert app.extensions["cds_suppression"].active_count() == 0
