"""Feedback is committed before the 200 and survives a restart of the service."""

from __future__ import annotations

from typing import Any

from tests.api.test_http_errors import request_body
from tests.support.fake_services import fake_registry


def feedback_body(card: str, **item: Any) -> dict[str, Any]:
    entry = {
        "card": card,
        "outcome": "overridden",
        "overrideReason": {
            "reason": {
                "code": "already-notified",
                "system": "urn:test",
                "display": "Allerede varslet",
            },
            "userComment": "ringt 10:14",
        },
        "outcomeTimestamp": "2026-11-25T10:15:00Z",
    }
    entry.update(item)
    return {"feedback": [entry]}


def test_feedback_survives_restart(make_app: Any) -> None:
    first = make_app(CDS_REGISTRY=fake_registry()).test_client()
    card_uuid = first.post("/cds-services/test-view", json=request_body()).get_json()["cards"][0][
        "uuid"
    ]
    response = first.post("/cds-services/test-view/feedback", json=feedback_body(card_uuid))
    assert response.status_code == 200
    assert response.get_json() == {"received": 1}

    restarted = make_app(CDS_REGISTRY=fake_registry())
    stored = restarted.extensions["cds_store"].feedback_for(card_uuid)
    assert len(stored) == 1
    assert stored[0].known_card is True
    assert stored[0].outcome == "overridden"
    assert stored[0].override_code == "already-notified"
    assert stored[0].user_comment == "ringt 10:14"


def test_feedback_for_unknown_card_is_kept_and_marked(make_app: Any) -> None:
    app = make_app(CDS_REGISTRY=fake_registry())
    body = feedback_body(
        "never-issued", outcome="accepted", overrideReason=None, acceptedSuggestions=[{"id": "s1"}]
    )
    del body["feedback"][0]["overrideReason"]
    response = app.test_client().post("/cds-services/test-view/feedback", json=body)
    assert response.status_code == 200
    stored = app.extensions["cds_store"].feedback_for("never-issued")
    assert [(s.known_card, s.outcome, s.accepted_suggestions) for s in stored] == [
        (False, "accepted", ["s1"])
    ]


def test_feedback_with_wrong_outcome_is_400(make_app: Any) -> None:
    client = make_app(CDS_REGISTRY=fake_registry()).test_client()
    response = client.post(
        "/cds-services/test-view/feedback", json=feedback_body("c1", outcome="ignored")
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["details"][0]["path"] == "feedback.0.outcome"


def test_empty_feedback_list_is_400(make_app: Any) -> None:
    client = make_app(CDS_REGISTRY=fake_registry()).test_client()
    response = client.post("/cds-services/test-view/feedback", json={"feedback": []})
    assert response.status_code == 400
