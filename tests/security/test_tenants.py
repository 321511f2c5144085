"""Tenants apart: one EHR's feedback never removes another EHR's cards.

Issued cards and suppressions are scoped to the verified caller (``iss``, and ``tenant``
where configured) and the request's ``fhirServer``; feedback counts only from the caller a
card was issued to, and only with an override reason that card offered. The attack table
(docs/security.md) names these tests.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.storage.test_suppression import SERVICE, content_policy, suppression_registry
from tests.support.clock import START, Clock
from tests.support.jwt_keys import ec_key, write_trusted_clients

BASE = "http://localhost/cds-services/"
FIRST_EHR = "https://ehr-one.example.org"
SECOND_EHR = "https://ehr-two.example.org"
FIRST_KEY = ec_key(kid="ehr-one", slot="ehr-one")
SECOND_KEY = ec_key(kid="ehr-two", slot="ehr-two")
FHIR_ONE = "https://fhir.hospital-one.example/R4"
FHIR_TWO = "https://fhir.hospital-two.example/R4"
NOTIFY = "notify-municipal-doctor"
ISOLATION = "isolation-inpatient"


@pytest.fixture
def app(make_app: Any, tmp_path: Path) -> Flask:
    clients = write_trusted_clients(
        tmp_path,
        [
            {"iss": FIRST_EHR, "jwks": {"keys": [FIRST_KEY.public_jwk()]}},
            {"iss": SECOND_EHR, "jwks": {"keys": [SECOND_KEY.public_jwk()]}},
        ],
    )
    built: Flask = make_app(
        CDS_CLOCK=Clock(START),
        CDS_REGISTRY=suppression_registry(),
        CDS_SUPPRESSION_POLICY=content_policy(),
        CDS_ALLOW_UNSIGNED="0",
        CDS_TRUSTED_CLIENTS=str(clients),
    )
    return built


def headers(iss: str) -> dict[str, str]:
    key = FIRST_KEY if iss == FIRST_EHR else SECOND_KEY
    return {"Authorization": f"Bearer {key.token(BASE + SERVICE, iss=iss)}"}


def call(
    client: FlaskClient,
    iss: str,
    findings: list[str],
    *,
    patient: str = "pat-1",
    fhir_server: str = FHIR_ONE,
    reasons: list[str] | None = None,
) -> dict[str, str]:
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": fhir_server,
        "context": {
            "userId": "Practitioner/1",
            "patientId": patient,
            "testFindings": findings,
            "testStatus": "suspected",
        },
        "prefetch": {},
    }
    if reasons is not None:
        body["context"]["testReasons"] = reasons
    response = client.post(BASE + SERVICE, json=body, headers=headers(iss))
    assert response.status_code == 200, response.get_data(as_text=True)
    return {card["source"]["topic"]["code"]: card["uuid"] for card in response.get_json()["cards"]}


def override(client: FlaskClient, iss: str, card_uuid: str, reason: str) -> dict[str, Any]:
    item = {
        "card": card_uuid,
        "outcome": "overridden",
        "overrideReason": {"reason": {"code": reason, "system": "urn:test", "display": reason}},
        "outcomeTimestamp": "2026-11-25T10:15:00Z",
    }
    url = BASE + SERVICE + "/feedback"
    key = FIRST_KEY if iss == FIRST_EHR else SECOND_KEY
    token = key.token(url, iss=iss)
    response = client.post(
        url, json={"feedback": [item]}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    answer: dict[str, Any] = response.get_json()
    return answer


def test_a_second_ehr_cannot_remove_the_first_ehrs_cards(app: Flask) -> None:
    client = app.test_client()
    assert NOTIFY in call(client, FIRST_EHR, [NOTIFY])
    # The second EHR calls with the first one's patient id and an invented prefetch, then
    # overrides the cards it got back as "already notified".
    theirs = call(client, SECOND_EHR, [NOTIFY])
    assert override(client, SECOND_EHR, theirs[NOTIFY], "already-notified")["recorded"] == 1
    assert app.extensions["cds_suppression"].active_count() == 1
    # Its own view of that patient is quiet; the first EHR's critical card is not touched.
    assert NOTIFY not in call(client, SECOND_EHR, [NOTIFY])
    assert NOTIFY in call(client, FIRST_EHR, [NOTIFY])


def test_feedback_on_another_ehrs_card_uuid_is_not_applied(app: Flask) -> None:
    client = app.test_client()
    mine = call(client, FIRST_EHR, [NOTIFY])
    answer = override(client, SECOND_EHR, mine[NOTIFY], "already-notified")
    assert answer == {"received": 1, "recorded": 0, "duplicates": 0, "unknown": 1}
    assert app.extensions["cds_suppression"].active_count() == 0
    assert NOTIFY in call(client, FIRST_EHR, [NOTIFY])
    # The right caller's override still works on the same card.
    assert override(client, FIRST_EHR, mine[NOTIFY], "already-notified")["recorded"] == 1
    assert NOTIFY not in call(client, FIRST_EHR, [NOTIFY])


def test_colliding_patient_ids_on_two_fhir_servers_keep_apart(app: Flask) -> None:
    client = app.test_client()
    first = call(client, FIRST_EHR, [NOTIFY], fhir_server=FHIR_ONE)
    override(client, FIRST_EHR, first[NOTIFY], "already-notified")
    assert NOTIFY not in call(client, FIRST_EHR, [NOTIFY], fhir_server=FHIR_ONE)
    # The same id at another hospital's FHIR server is another patient.
    assert NOTIFY in call(client, FIRST_EHR, [NOTIFY], fhir_server=FHIR_TWO)


def test_an_override_reason_the_card_does_not_offer_suppresses_nothing(app: Flask) -> None:
    client = app.test_client()
    # An isolation card offers "measures in place" and "not relevant", as in the content;
    # "already notified" (720 hours) belongs to the notification card only.
    offered = ["measures-in-place", "not-relevant-for-contact"]
    cards = call(client, FIRST_EHR, [ISOLATION], reasons=offered)
    answer = override(client, FIRST_EHR, cards[ISOLATION], "already-notified")
    assert answer["recorded"] == 1  # the outcome is kept for the dashboard
    assert app.extensions["cds_suppression"].active_count() == 0
    assert ISOLATION in call(client, FIRST_EHR, [ISOLATION], reasons=offered)
    # A reason the card offered does suppress it.
    again = call(client, FIRST_EHR, [ISOLATION], reasons=offered)
    override(client, FIRST_EHR, again[ISOLATION], "measures-in-place")
    assert ISOLATION not in call(client, FIRST_EHR, [ISOLATION], reasons=offered)
