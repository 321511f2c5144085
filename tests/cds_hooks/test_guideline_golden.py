"""Golden cases: each request through the service registry, compared with expected.json."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from functools import cache
from typing import Any

import pytest

from cds_hooks.catalog import build_registry
from cds_hooks.fhir import parse_resource
from cds_hooks.knowledge import load_knowledge
from cds_hooks.models import CdsResponse, HookRequest
from cds_hooks.prefetch import resolve, resources_of
from tests.support.golden import NOW, Case, golden_clock, iter_cases, normalise

CASES = list(iter_cases())
HOOKS = {
    "patient-view",
    "encounter-start",
    "appointment-book",
    "order-select",
    "order-sign",
    "encounter-discharge",
    "problem-list-item-create",
}


@pytest.fixture(scope="module")
def registry() -> Any:
    return build_registry(load_knowledge(), clock=golden_clock())


def _respond(registry: Any, case: Case) -> dict[str, Any]:
    service = registry.get(case.service_id)
    request = HookRequest.model_validate(case.request)
    service.check_request(request)
    evaluation = service.evaluate(request, resolve(service, request))
    return CdsResponse(cards=evaluation.cards).wire()


def _resources(case: Case) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    prefetch = case.request.get("prefetch") or {}
    for value in [*prefetch.values(), *case.request["context"].values()]:
        if isinstance(value, dict):
            found.extend(resources_of(value) or [])
    return found


def test_enough_cases_for_every_hook() -> None:
    assert len(CASES) >= 30
    assert {case.request["hook"] for case in CASES} == HOOKS
    # Each hook has cases with and without cards: the pairs around the boundaries.
    for hook in HOOKS:
        outcomes = {bool(c.expected["cards"]) for c in CASES if c.request["hook"] == hook}
        assert outcomes == {True, False}, hook


def test_case_descriptions_name_a_guideline_section() -> None:
    described = [case for case in CASES if case.description is not None]
    assert len(described) >= 20
    for case in described:
        assert re.match(r"Punkt \d", case.description or ""), case.id


DESCRIBED = [case for case in CASES if case.description is not None]


@pytest.mark.parametrize("case", DESCRIBED, ids=[case.id for case in DESCRIBED])
def test_described_cases_hold_at_a_fixed_clock(case: Case) -> None:
    # Their dates lie in the weeks before 2026-11-25: the lookback and recency windows, counted
    # from the call's clock, give the same answer as no window.
    now = dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.UTC)
    assert normalise(_respond(clocked(now), case)) == case.expected


@cache
def clocked(now: dt.datetime) -> Any:
    return build_registry(load_knowledge(), clock=lambda: now)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_golden_case(registry: Any, case: Case) -> None:
    assert normalise(_respond(registry, case)) == case.expected


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_case_data_is_valid_fhir(case: Case) -> None:
    # A negative case must fail for its clinical reason, not because its data is malformed.
    for resource in _resources(case):
        if resource["resourceType"] == "Encounter" and isinstance(resource.get("class"), list):
            continue  # R5 shape on purpose
        parse_resource(resource)


@pytest.mark.parametrize("case", [c for c in CASES if c.expected["cards"]], ids=lambda c: c.id)
def test_cards_are_fresh_per_call_and_suggestions_valid(registry: Any, case: Case) -> None:
    first, second = _respond(registry, case), _respond(registry, case)
    uuids = [card["uuid"] for card in first["cards"] + second["cards"]]
    assert len(set(uuids)) == len(uuids)
    for card in first["cards"]:
        assert all(link["type"] == "absolute" for link in card.get("links", []))
        for suggestion in card.get("suggestions", []):
            assert card["selectionBehavior"] == "any"
            for action in suggestion["actions"]:
                parse_resource(action["resource"])


# --- the laboratory lookback window (punkt 3 and 4; content: laboratory_lookback_days) ----------


def _only_result_age(case: Case) -> dt.timedelta:
    (observation,) = [r for r in _resources(case) if r["resourceType"] == "Observation"]
    return NOW - dt.datetime.fromisoformat(observation["effectiveDateTime"])


@pytest.mark.parametrize(
    ("inside", "outside", "inside_age", "outside_age"),
    [
        (
            "mkopper-patient-view/lab-positive-41-days-inside-window",
            "mkopper-patient-view/lab-positive-43-days-outside-window",
            dt.timedelta(days=-1),
            dt.timedelta(days=1),
        ),
        (
            "mkopper-encounter-discharge/lab-positive-42-days-at-window-edge",
            "mkopper-encounter-discharge/lab-positive-42-days-and-1-second-outside",
            dt.timedelta(0),
            dt.timedelta(seconds=1),
        ),
    ],
    ids=["a-day-either-side", "at-the-edge"],
)
def test_a_pair_of_cases_sits_on_each_side_of_the_lookback_window(
    registry: Any, inside: str, outside: str, inside_age: dt.timedelta, outside_age: dt.timedelta
) -> None:
    days = load_knowledge().content.matching.laboratory_lookback_days
    assert days is not None
    window = dt.timedelta(days=days)
    by_id = {case.id: case for case in CASES}
    assert _only_result_age(by_id[inside]) == window + inside_age
    assert _only_result_age(by_id[outside]) == window + outside_age
    assert normalise(_respond(registry, by_id[inside]))["cards"]
    assert normalise(_respond(registry, by_id[outside]))["cards"] == []


def _without_laboratory_window(knowledge: Any) -> Any:
    matching = knowledge.content.matching.model_copy(update={"laboratory_lookback_days": None})
    content = knowledge.content.model_copy(update={"matching": matching})
    return dataclasses.replace(knowledge, content=content)


def _description(case: Case) -> str:
    """What the case says it is about: its README.md and expected.json's description."""
    readme = case.path / "README.md"
    texts = [readme.read_text(encoding="utf-8")] if readme.is_file() else []
    texts.append(str(getattr(case, "description", None) or ""))
    return "\n".join(texts)


def test_only_cases_about_the_window_depend_on_it(registry: Any) -> None:
    # The same clock, with and without the laboratory window. A case whose answer changes must
    # say so: its description names the content setting. Any other case means the same either
    # way, so its laboratory dates cannot make it pass for a reason it does not name.
    knowledge = load_knowledge()
    unwindowed = build_registry(_without_laboratory_window(knowledge), clock=golden_clock())
    depends = [
        case
        for case in CASES
        if normalise(_respond(registry, case)) != normalise(_respond(unwindowed, case))
    ]
    assert {case.id for case in depends} >= {
        "mkopper-patient-view/lab-positive-43-days-outside-window",
        "mkopper-encounter-discharge/lab-positive-42-days-and-1-second-outside",
    }
    for case in depends:
        assert "laboratory_lookback_days" in _description(case), case.id
