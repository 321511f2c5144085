"""Suppression with the real guideline services and content: codes on the cards line up."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from typing import Any

from flask.testing import FlaskClient

from cds_hooks.knowledge import load_knowledge
from tests.support.clock import START, Clock
from tests.support.paths import TESTS

CASE = (
    TESTS
    / "cases"
    / "mkopper-problem-list-item-create"
    / "suspected-snomed-inpatient"
    / "request.json"
)
SERVICE = "mkopper-problem-list-item-create"


def suspected_request() -> dict[str, Any]:
    body: dict[str, Any] = json.loads(CASE.read_text(encoding="utf-8"))
    return body


def confirmed_request() -> dict[str, Any]:
    body = copy.deepcopy(suspected_request())
    for entry in body["context"]["conditions"]["entry"]:
        for coding in entry["resource"]["verificationStatus"]["coding"]:
            coding["code"] = "confirmed"
    return body


def cards_by_kind(client: FlaskClient, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    response = client.post(f"/cds-services/{SERVICE}", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return {card["source"]["topic"]["code"]: card for card in response.get_json()["cards"]}


def override_with(client: FlaskClient, card: dict[str, Any], reason_code: str) -> None:
    # The reason exactly as the card offered it, as an EHR would send it back.
    reason = next(r for r in card["overrideReasons"] if r["code"] == reason_code)
    body = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {"reason": reason},
                "outcomeTimestamp": "2026-11-25T10:15:00Z",
            }
        ]
    }
    response = client.post(f"/cds-services/{SERVICE}/feedback", json=body)
    assert response.status_code == 200


def test_overriding_the_notification_card_suppresses_it(make_app: Any) -> None:
    client = make_app().test_client()
    first = cards_by_kind(client, suspected_request())
    assert {"notify-municipal-doctor", "isolation-inpatient"} <= set(first)
    override_with(client, first["notify-municipal-doctor"], "already-notified")
    second = cards_by_kind(client, suspected_request())
    assert "notify-municipal-doctor" not in second
    assert "isolation-inpatient" in second


def test_a_reason_without_hours_keeps_the_card(make_app: Any) -> None:
    client = make_app().test_client()
    first = cards_by_kind(client, suspected_request())
    override_with(client, first["notify-municipal-doctor"], "not-relevant-for-contact")
    assert "notify-municipal-doctor" in cards_by_kind(client, suspected_request())


def test_confirmation_brings_the_notification_back(make_app: Any) -> None:
    client = make_app().test_client()
    first = cards_by_kind(client, suspected_request())
    override_with(client, first["notify-municipal-doctor"], "already-notified")
    assert "notify-municipal-doctor" not in cards_by_kind(client, suspected_request())
    assert "notify-municipal-doctor" in cards_by_kind(client, confirmed_request())


def test_a_suppressed_card_makes_room_for_the_next_one(make_app: Any) -> None:
    """The cap applies after suppression: with CDS_MAX_CARDS=1 the next card moves up."""
    client = make_app(CDS_MAX_CARDS="1").test_client()
    first = cards_by_kind(client, suspected_request())
    assert len(first) == 1
    ((kind, card),) = first.items()
    override_with(client, card, "already-notified")
    second = cards_by_kind(client, suspected_request())
    assert len(second) == 1
    assert kind not in second


def post_feedback(client: FlaskClient, item: dict[str, Any]) -> dict[str, Any]:
    entry = {"outcomeTimestamp": "2026-11-25T10:15:00Z", **item}
    response = client.post(f"/cds-services/{SERVICE}/feedback", json={"feedback": [entry]})
    assert response.status_code == 200, response.get_data(as_text=True)
    answer: dict[str, Any] = response.get_json()
    return answer


def accept(client: FlaskClient, card: dict[str, Any], suggestions: bool = True) -> dict[str, Any]:
    """Accept the card as an EHR does after the clinician took its suggestion."""
    item: dict[str, Any] = {"card": card["uuid"], "outcome": "accepted"}
    if suggestions:
        item["acceptedSuggestions"] = [{"id": s["uuid"]} for s in card["suggestions"]]
    return post_feedback(client, item)


def test_accepting_the_notification_suggestion_suppresses_as_already_notified(
    make_app: Any,
) -> None:
    clock = Clock(START)
    app = make_app(CDS_CLOCK=clock)
    client = app.test_client()
    assert (
        app.extensions["cds_suppression"].policy.accept_reason_for("notify-municipal-doctor")
        == "already-notified"
    )
    first = cards_by_kind(client, suspected_request())
    notification = first["notify-municipal-doctor"]
    assert notification["suggestions"]
    assert accept(client, notification)["recorded"] == 1
    assert app.extensions["cds_suppression"].active_count() == 1
    second = cards_by_kind(client, suspected_request())
    assert "notify-municipal-doctor" not in second
    assert "isolation-inpatient" in second
    # As long as "already notified" (720 hours), counted from the feedback.
    clock.now += timedelta(hours=720, seconds=-1)
    assert "notify-municipal-doctor" not in cards_by_kind(client, suspected_request())
    clock.now += timedelta(seconds=1)
    assert "notify-municipal-doctor" in cards_by_kind(client, suspected_request())


def test_accepting_without_a_suggestion_or_another_card_does_not_suppress(
    make_app: Any,
) -> None:
    app = make_app(CDS_CLOCK=Clock(START))
    client = app.test_client()
    first = cards_by_kind(client, suspected_request())
    # An acceptance that names no suggestion: the notification was not recorded.
    assert accept(client, first["notify-municipal-doctor"], suggestions=False)["recorded"] == 1
    # A card whose finding has no accept_suppresses_as.
    isolation = first["isolation-inpatient"]
    assert (
        post_feedback(
            client,
            {
                "card": isolation["uuid"],
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": "x"}],
            },
        )["recorded"]
        == 1
    )
    assert app.extensions["cds_suppression"].active_count() == 0
    assert {"notify-municipal-doctor", "isolation-inpatient"} <= set(
        cards_by_kind(client, suspected_request())
    )


def test_the_notification_card_does_not_offer_to_postpone(make_app: Any) -> None:
    client = make_app().test_client()
    notification = cards_by_kind(client, suspected_request())["notify-municipal-doctor"]
    codes = [reason["code"] for reason in notification["overrideReasons"]]
    # The guideline says "umiddelbart": no card offers "Utsett 24 timer" (postpone-24h).
    assert codes == ["already-notified", "not-relevant-for-contact"]
    assert "postpone-24h" not in load_knowledge().content.override_reasons
