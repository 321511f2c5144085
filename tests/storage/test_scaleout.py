"""Two service instances (separate gunicorn processes, separate ports) over one PostgreSQL.

They stand behind one load balancer: the same public URL (so the same JWT
audience), the same trusted clients and the same patient-hash secret, and
nothing else shared but the database. Whatever one instance learns (issued
cards, feedback, suppressions, JWT ids seen) the other must know at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from plugin.storage.store import Store, create_db_engine
from tests.support.jwt_keys import ISSUER, SigningKey, ec_key, write_trusted_clients
from tests.support.paths import PATIENTS
from tests.support.service_process import ServiceProcess, fresh_schema, http, postgres_url

pytestmark = pytest.mark.postgres

PUBLIC_URL = "https://cds.test.example"
SERVICE = "mkopper-patient-view"
# A suspected case in the emergency department: the service answers with cards.
PATIENT = "mk-suspected-emergency-respiratory"


@dataclass
class Pair:
    key: SigningKey
    a: ServiceProcess
    b: ServiceProcess
    database_url: str

    def token(self, path: str) -> dict[str, str]:
        # The instances run on their real clocks: the token is issued on it too.
        token = self.key.token(PUBLIC_URL + path, now=time.time())
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    with fresh_schema(postgres_url()) as url:
        key = ec_key()
        clients = write_trusted_clients(tmp_path, [{"iss": ISSUER, "jwks": key.jwks()}])
        settings = {
            "CDS_DATABASE_URL": url,
            "CDS_TRUSTED_CLIENTS": str(clients),
            "CDS_PUBLIC_URL": PUBLIC_URL,
            "CDS_ALLOW_UNSIGNED": "0",
            "CDS_PATIENT_HASH_SECRET": "scale-out-test-secret-0123456789abcdef",
        }
        a = ServiceProcess(tmp_path / "a", **settings)
        try:
            b = ServiceProcess(tmp_path / "b", **settings)
        except Exception:
            a.stop()
            raise
        try:
            yield Pair(key, a, b, url)
        finally:
            a.stop()
            b.stop()


def hook_body(patient: str = PATIENT) -> dict[str, Any]:
    """patient-view with every prefetch key filled from the patient's Bundle."""
    bundle = json.loads((PATIENTS / f"{patient}.json").read_text(encoding="utf-8"))
    resources = [entry["resource"] for entry in bundle["entry"]]

    def searchset(kind: str) -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r} for r in resources if r["resourceType"] == kind],
        }

    encounter = next(r for r in resources if r["resourceType"] == "Encounter")
    return {
        "hook": "patient-view",
        "hookInstance": "5f7c1d0e-6a0b-4b8e-9a51-2f3c4d5e6f70",
        "context": {
            "userId": "Practitioner/1",
            "patientId": patient,
            "encounterId": encounter["id"],
        },
        "prefetch": {
            "conditions": searchset("Condition"),
            "observations": searchset("Observation"),
            "encounter": encounter,
            "aerosolOrders": searchset("ServiceRequest"),
        },
    }


def call(pair: Pair, instance: ServiceProcess) -> list[dict[str, Any]]:
    path = f"/cds-services/{SERVICE}"
    status, body = http("POST", instance.base + path, hook_body(), pair.token(path))
    assert status == 200, body
    cards: list[dict[str, Any]] = body["cards"]
    return cards


def send_feedback(pair: Pair, instance: ServiceProcess, card: str, **item: Any) -> None:
    path = f"/cds-services/{SERVICE}/feedback"
    entry = {"card": card, "outcome": "accepted", "outcomeTimestamp": "2026-11-25T10:15:00Z"}
    entry.update(item)
    status, body = http("POST", instance.base + path, {"feedback": [entry]}, pair.token(path))
    assert status == 200, body
    assert body == {"received": 1, "recorded": 1, "duplicates": 0, "unknown": 0}


def stored(pair: Pair, card: str) -> list[Any]:
    engine = create_db_engine(pair.database_url)
    try:
        return Store(engine).feedback_for(card)
    finally:
        engine.dispose()


def test_feedback_sent_to_either_instance_is_known_to_both(pair: Pair) -> None:
    card_from_a = call(pair, pair.a)[0]["uuid"]
    card_from_b = call(pair, pair.b)[0]["uuid"]
    assert card_from_a != card_from_b

    # Each instance recognises the card the other one issued.
    send_feedback(pair, pair.b, card_from_a)
    send_feedback(pair, pair.a, card_from_b)

    for card in (card_from_a, card_from_b):
        rows = stored(pair, card)
        assert len(rows) == 1
        assert rows[0].known_card is True
        assert rows[0].outcome == "accepted"


def test_an_override_through_one_instance_holds_in_the_other(pair: Pair) -> None:
    cards = call(pair, pair.a)
    first = cards[0]
    reasons = first.get("overrideReasons") or []
    suppressing = [r for r in reasons if r.get("code")]
    if not suppressing:
        pytest.fail("the first card offers no override reason to test suppression with")
    # The card comes back unchanged until it is overridden; then neither instance shows it.
    assert first["summary"] in [c["summary"] for c in call(pair, pair.b)]
    for reason in suppressing:
        send_feedback(
            pair, pair.a, first["uuid"], outcome="overridden", overrideReason={"reason": reason}
        )
        summaries_b = [c["summary"] for c in call(pair, pair.b)]
        if first["summary"] not in summaries_b:
            summaries_a = [c["summary"] for c in call(pair, pair.a)]
            assert first["summary"] not in summaries_a
            return
        # This reason does not suppress; the card is new each call, so take the next one.
        first = next(c for c in call(pair, pair.a) if c["summary"] == first["summary"])
    pytest.fail("no override reason of the card suppressed it in the other instance")


def test_a_jwt_used_at_one_instance_is_refused_by_the_other(pair: Pair) -> None:
    path = f"/cds-services/{SERVICE}"
    headers = pair.token(path)

    status, _ = http("POST", pair.a.base + path, hook_body(), headers)
    assert status == 200
    status, body = http("POST", pair.b.base + path, hook_body(), headers)
    assert status == 401
    assert body["error"]["message"] == "The JWT has already been used."

    # The same request with a fresh token is fine at the second instance.
    status, _ = http("POST", pair.b.base + path, hook_body(), pair.token(path))
    assert status == 200
