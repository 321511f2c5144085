"""Golden cases: each request through the service registry, compared with expected.json."""

from __future__ import annotations

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
from tests.support.golden import Case, iter_cases, normalise

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
    return build_registry(load_knowledge())


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
