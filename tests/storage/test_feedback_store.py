"""Feedback is committed before the 200 and survives a restart of the service."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from plugin.admin.report import build_report
from tests.api.test_http_errors import request_body
from tests.support.clock import START, Clock
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
    assert response.get_json() == {"received": 1, "recorded": 1, "duplicates": 0, "unknown": 0}

    restarted = make_app(CDS_REGISTRY=fake_registry())
    stored = restarted.extensions["cds_store"].feedback_for(card_uuid)
    assert len(stored) == 1
    assert stored[0].known_card is True
    assert stored[0].outcome == "overridden"
    assert stored[0].override_code == "already-notified"
    assert stored[0].user_comment == "ringt 10:14"


def test_feedback_for_a_card_never_issued_is_counted_and_not_stored(make_app: Any) -> None:
    app = make_app(CDS_REGISTRY=fake_registry())
    body = feedback_body(
        "never-issued", outcome="accepted", overrideReason=None, acceptedSuggestions=[{"id": "s1"}]
    )
    del body["feedback"][0]["overrideReason"]
    response = app.test_client().post("/cds-services/test-view/feedback", json=body)
    assert response.status_code == 200
    assert response.get_json() == {"received": 1, "recorded": 0, "duplicates": 0, "unknown": 1}
    assert app.extensions["cds_store"].feedback_for("never-issued") == []


def test_5000_feedback_items_for_random_uuids_store_nothing(make_app: Any) -> None:
    app = make_app(CDS_REGISTRY=fake_registry())
    client = app.test_client()
    for n in range(50):
        items = [feedback_body(f"random-{n}-{m}")["feedback"][0] for m in range(100)]
        response = client.post("/cds-services/test-view/feedback", json={"feedback": items})
        assert response.get_json()["unknown"] == 100
    with app.extensions["cds_store"].engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM feedback")).scalar_one() == 0


def test_a_retried_post_is_idempotent_and_one_outcome_is_kept_per_card(make_app: Any) -> None:
    app = make_app(CDS_REGISTRY=fake_registry())
    client = app.test_client()
    card_uuid = client.post("/cds-services/test-view", json=request_body()).get_json()["cards"][0][
        "uuid"
    ]
    body = feedback_body(card_uuid)
    # One post naming the card 100 times, then the same post retried.
    body["feedback"] = body["feedback"] * 100
    first = client.post("/cds-services/test-view/feedback", json=body).get_json()
    again = client.post("/cds-services/test-view/feedback", json=body).get_json()
    assert first == {"received": 100, "recorded": 1, "duplicates": 99, "unknown": 0}
    assert again == {"received": 100, "recorded": 0, "duplicates": 100, "unknown": 0}
    assert len(app.extensions["cds_store"].feedback_for(card_uuid)) == 1


def test_feedback_over_the_caps_is_400_naming_the_field(make_app: Any) -> None:
    client = make_app(CDS_REGISTRY=fake_registry()).test_client()
    too_many = {"feedback": feedback_body("c1")["feedback"] * 101}
    response = client.post("/cds-services/test-view/feedback", json=too_many)
    assert response.status_code == 400
    assert response.get_json()["error"]["details"][0]["path"] == "feedback"
    long_comment = feedback_body("c1")
    long_comment["feedback"][0]["overrideReason"]["userComment"] = "x" * 401
    response = client.post("/cds-services/test-view/feedback", json=long_comment)
    assert response.status_code == 400
    assert (
        response.get_json()["error"]["details"][0]["path"]
        == "feedback.0.overrideReason.userComment"
    )
    at_the_cap = feedback_body("c1")
    at_the_cap["feedback"][0]["overrideReason"]["userComment"] = "x" * 400
    assert client.post("/cds-services/test-view/feedback", json=at_the_cap).status_code == 200


def test_feedback_and_card_counts_past_retention_are_deleted(make_app: Any) -> None:
    clock = Clock(START)
    app = make_app(CDS_REGISTRY=fake_registry(), CDS_CLOCK=clock, CDS_FEEDBACK_RETENTION_DAYS=30)
    client = app.test_client()
    card_uuid = client.post("/cds-services/test-view", json=request_body()).get_json()["cards"][0][
        "uuid"
    ]
    client.post("/cds-services/test-view/feedback", json=feedback_body(card_uuid))
    assert app.extensions["cds_issued_counts"].flush() == 1
    store = app.extensions["cds_store"]
    clock.now += timedelta(days=30)
    assert store.purge() == 0
    assert len(store.feedback_for(card_uuid)) == 1
    clock.now += timedelta(seconds=1)
    assert store.purge() == 1  # the feedback row
    assert store.feedback_for(card_uuid) == []
    # The day's count of cards shown goes once the whole day is past retention.
    clock.now = START.replace(hour=0) + timedelta(days=31)
    assert store.purge() == 1
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM issued_counts")).scalar_one() == 0


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


def test_the_dashboard_counts_a_card_overridden_10000_times_once(make_app: Any) -> None:
    clock = Clock(START)
    app = make_app(CDS_REGISTRY=fake_registry(), CDS_CLOCK=clock)
    client = app.test_client()
    card_uuid = client.post("/cds-services/test-view", json=request_body()).get_json()["cards"][0][
        "uuid"
    ]
    item = feedback_body(card_uuid)["feedback"][0]
    for _ in range(100):
        client.post("/cds-services/test-view/feedback", json={"feedback": [item] * 100})
    app.extensions["cds_issued_counts"].flush()
    report = build_report(
        app.extensions["cds_store"].engine,
        now=clock(),
        days=1,
        kind_labels={},
        reason_labels={},
    )
    assert sum(report.daily_total("shown").values()) == 1
    assert sum(report.daily_total("overridden").values()) == 1
