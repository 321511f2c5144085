"""Parity over every golden case: full, partial and no prefetch give the same cards.

The case's prefetch resources are loaded into the Medplum FHIR test server; the
same request then runs with its whole prefetch, with part of it, and with none
(``fhirServer`` pointing at the test server), through the real registry and
``prefetch.resolve``. All three must match each other and ``expected.json``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from cds_hooks.catalog import build_registry
from cds_hooks.fhir import Allowlist, ClientLimits, FhirClient
from cds_hooks.knowledge import load_knowledge
from cds_hooks.models import CdsResponse, HookRequest
from cds_hooks.prefetch import resolve, resources_of
from cds_hooks.services import ServiceRegistry
from tests.support.fhirserver import FhirTestServer, require_server
from tests.support.golden import Case, golden_clock, iter_cases, normalise

pytestmark = pytest.mark.fhir_server

CASES = list(iter_cases())
# A resolved or refuted m-kopper Condition is fetched like any other (the conditions template
# has no status filter), so these cases hold when fetched too (docs/clinical-safety.md, H4).
PARITY_CASES = [pytest.param(case, id=case.id) for case in CASES]
TOKEN = "parity-token"
BUDGET_MS = 5000  # generous: this test is about equal answers, the fault tests about time


@pytest.fixture(scope="module")
def registry() -> ServiceRegistry:
    return build_registry(load_knowledge(), clock=golden_clock())


@pytest.fixture(scope="module")
def server() -> Iterator[FhirTestServer]:
    """A server that stores what it is given as-is (some cases carry R5-shaped data on
    purpose) and insists on the bearer token, so the fetch path must send it."""
    require_server()
    instance = FhirTestServer(token=TOKEN, validate_on_write=False).start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[FhirClient]:
    with FhirClient(ClientLimits(timeout_s=5.0, connect_timeout_s=2.0)) as instance:
        yield instance


def prefetch_resources(case: Case) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for value in (case.request.get("prefetch") or {}).values():
        found.extend(resources_of(value) or [])
    return found


def variants(case: Case, base: str) -> dict[str, dict[str, Any]]:
    """The request with all, part and none of its prefetch, pointed at the test server."""
    full = copy.deepcopy(case.request)
    full["fhirServer"] = base
    full["fhirAuthorization"] = {
        "access_token": TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "mkopper-cds",
    }
    keys = sorted(full.get("prefetch") or {})
    out = {"full": full}
    if keys:
        # Two partial shapes, so every key is fetched in one and supplied in the other.
        first_half = copy.deepcopy(full)
        first_half["prefetch"] = {k: full["prefetch"][k] for k in keys[: len(keys) // 2]}
        second_half = copy.deepcopy(full)
        second_half["prefetch"] = {k: full["prefetch"][k] for k in keys[len(keys) // 2 :]}
        out["partial-a"] = first_half
        out["partial-b"] = second_half
    none = copy.deepcopy(full)
    none.pop("prefetch", None)
    out["none"] = none
    return out


@pytest.mark.parametrize("case", PARITY_CASES)
def test_full_partial_and_no_prefetch_give_the_same_cards(
    case: Case, registry: ServiceRegistry, server: FhirTestServer, client: FhirClient
) -> None:
    server.reset()
    server.load(prefetch_resources(case))
    service = registry.get(case.service_id)
    answers: dict[str, dict[str, Any]] = {}
    failed: dict[str, frozenset[str]] = {}
    for name, body in variants(case, server.base_url).items():
        request = HookRequest.model_validate(body)
        service.check_request(request)
        data = resolve(
            service,
            request,
            client=client,
            budget_ms=BUDGET_MS,
            allowed=Allowlist([server.base_url]),
        )
        failed[name] = data.failed
        answers[name] = normalise(CdsResponse(cards=service.evaluate(request, data).cards).wire())
    assert answers["full"] == case.expected
    for name in answers:
        # Fetching may not lose a key the EHR could supply, nor change a single card.
        assert failed[name] == failed["full"], name
        assert answers[name] == answers["full"], name


def test_parity_covers_every_golden_case() -> None:
    assert len(CASES) >= 30
