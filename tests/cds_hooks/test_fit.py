"""The card cap: the plain ``cut_to``, and ``CapFitter``, which folds related advice into a card
still shown before it cuts (guideline sections 7 and 3 are never silently lost)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import pytest

from cds_hooks.cards import CapFitter, RenderContext, render_cards
from cds_hooks.knowledge import load_knowledge
from cds_hooks.models import Card, Source
from cds_hooks.rules import Finding
from cds_hooks.services import IssuedCard, StaticCard, cut_to
from tests.support.golden import CASES_DIR


def _item(finding: str, *merged: str) -> IssuedCard:
    card = Card(summary=finding, indicator="info", source=Source(label="test"))
    return StaticCard(card=card, finding=finding, merged=merged)


def test_keeps_the_first_cards_and_names_every_finding_it_cuts() -> None:
    items = [_item("a"), _item("b"), _item("c", "d"), _item("e")]
    fitted = cut_to(items, 2)
    assert [item.finding for item in fitted.issued] == ["a", "b"]
    assert fitted.cut == ("c", "d", "e")


def test_no_limit_keeps_everything() -> None:
    items = [_item("a"), _item("b")]
    fitted = cut_to(items, None)
    assert fitted.issued == items
    assert fitted.cut == ()


# --- CapFitter: merge related advice before cutting ------------------------------------------

NOW = dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.UTC)
STAFF_ADVICE = "Helsepersonell som er gravide bør unngå å behandle/pleie/undersøke pasienter"
INFECTIOUS_ADVICE = "Man er smitteførende fra symptomstart til skorpene har falt av"


@pytest.fixture(scope="module")
def knowledge() -> Any:
    return load_knowledge()


def rendered(knowledge: Any, *keys: str) -> list[IssuedCard]:
    findings = [Finding(key, ("Condition/c1",)) for key in keys]
    return render_cards(knowledge, findings, RenderContext("p1", "e1"), max_cards=None)


def test_staff_advice_is_folded_into_the_regime_card_under_the_cap(knowledge: Any) -> None:
    items = rendered(
        knowledge,
        "notify-municipal-doctor",
        "isolation-inpatient",
        "respirator",
        "staff-in-vulnerable-groups",
    )
    fitted = CapFitter(knowledge)(items, 3)
    assert [item.finding for item in fitted.issued] == [
        "notify-municipal-doctor",
        "isolation-inpatient",
        "respirator",
    ]
    assert fitted.cut == ()
    host = fitted.issued[1]
    assert host.merged == ("staff-in-vulnerable-groups",)
    assert STAFF_ADVICE in host.card.detail
    assert "**Helsepersonell i sårbar gruppe**" in host.card.detail
    assert "punkt 5.2, 7." in host.card.detail
    # Re-rendered: a fresh card, not the one the regime had before.
    assert host.card.uuid != items[1].card.uuid


def test_what_cannot_be_folded_is_cut_and_named(knowledge: Any) -> None:
    items = rendered(
        knowledge,
        "notify-municipal-doctor",
        "isolation-inpatient",
        "respirator",
        "contact-tracing",
        "staff-in-vulnerable-groups",
        "infectious-period",
    )
    fitted = CapFitter(knowledge)(items, 3)
    assert [item.finding for item in fitted.issued] == [
        "notify-municipal-doctor",
        "isolation-inpatient",
        "respirator",
    ]
    # The infectious period would go into contact tracing, but that card is cut too.
    assert fitted.cut == ("contact-tracing", "infectious-period")
    assert fitted.issued[1].merged == ("staff-in-vulnerable-groups",)


def test_infectious_period_goes_into_contact_tracing_when_that_card_is_shown(
    knowledge: Any,
) -> None:
    items = rendered(
        knowledge,
        "isolation-inpatient",
        "respirator",
        "contact-tracing",
        "staff-in-vulnerable-groups",
        "infectious-period",
    )
    fitted = CapFitter(knowledge)(items, 3)
    assert [(item.finding, item.merged) for item in fitted.issued] == [
        ("isolation-inpatient", ("staff-in-vulnerable-groups",)),
        ("respirator", ()),
        ("contact-tracing", ("infectious-period",)),
    ]
    assert fitted.cut == ()
    assert INFECTIOUS_ADVICE in fitted.issued[2].card.detail


def test_nothing_is_folded_when_everything_fits(knowledge: Any) -> None:
    items = rendered(knowledge, "isolation-inpatient", "staff-in-vulnerable-groups")
    fitted = CapFitter(knowledge)(items, 3)
    assert fitted.issued == items
    assert CapFitter(knowledge)(items, None).issued == items


def test_cards_without_their_findings_are_only_cut(knowledge: Any) -> None:
    # Cards another step made (no findings to render from) are cut as the plain cap does.
    items = [_item("isolation-inpatient"), _item("respirator"), _item("staff-in-vulnerable-groups")]
    fitted = CapFitter(knowledge)(items, 2)
    assert fitted.cut == ("staff-in-vulnerable-groups",)


def test_http_confirmed_inpatient_with_intubation_keeps_staff_advice_and_logs_the_cut(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the app: at most three cards, none of section 7's advice lost, and the call's
    log line names the findings the cap still cut (keys only, no patient data)."""
    case = CASES_DIR / "mkopper-patient-view" / "cap-confirmed-intubation-inpatient"
    body = json.loads((case / "request.json").read_text(encoding="utf-8"))
    body.pop("fhirServer")
    client = make_app(CDS_CLOCK=lambda: NOW).test_client()
    with caplog.at_level(logging.INFO, logger="plugin.calls"):
        response = client.post("/cds-services/mkopper-patient-view", json=body)
    assert response.status_code == 200
    cards = response.get_json()["cards"]
    assert len(cards) <= 3
    assert [card["source"]["topic"]["code"] for card in cards] == [
        "notify-municipal-doctor",
        "isolation-inpatient",
        "respirator",
    ]
    assert sum(STAFF_ADVICE in card["detail"] for card in cards) == 1
    line = next(r.getMessage() for r in caplog.records if r.name == "plugin.calls")
    assert '"cut":["contact-tracing","infectious-period"]' in line
    assert "example-patient-1" not in line


def test_http_nothing_cut_is_not_logged_as_cut(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    case = CASES_DIR / "mkopper-patient-view" / "cap-confirmed-intubation-notified"
    body = json.loads((case / "request.json").read_text(encoding="utf-8"))
    body.pop("fhirServer")
    client = make_app(CDS_CLOCK=lambda: NOW).test_client()
    with caplog.at_level(logging.INFO, logger="plugin.calls"):
        response = client.post("/cds-services/mkopper-patient-view", json=body)
    cards = response.get_json()["cards"]
    assert [card["source"]["topic"]["code"] for card in cards] == [
        "isolation-inpatient",
        "respirator",
        "contact-tracing",
    ]
    assert STAFF_ADVICE in cards[0]["detail"] and INFECTIOUS_ADVICE in cards[2]["detail"]
    line = next(r.getMessage() for r in caplog.records if r.name == "plugin.calls")
    assert '"cut"' not in line
