"""The FHIR client and prefetch.resolve against the real Medplum FHIR test server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from cds_hooks.errors import DataUnavailable, FhirAuthError, FhirError
from cds_hooks.fhir import Allowlist, ClientLimits, FhirClient
from cds_hooks.models import HookRequest
from cds_hooks.prefetch import resolve
from cds_hooks.services import CdsService, Evaluation, PrefetchData
from tests.support import fhirserver
from tests.support.fhirserver import FhirTestServer, require_server

pytestmark = pytest.mark.fhir_server

fhir_server = fhirserver.fhir_server  # pytest fixtures, used by name
fhir_store = fhirserver.fhir_store

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
TOKEN = "medplum-test-token"
# Codes only for search mechanics: any two distinct values serve, no clinical meaning here.
WANTED = f"{LOINC}|100383-9"
OTHER = f"{LOINC}|100434-0"


def observation(oid: str, patient: str, code: str) -> dict[str, Any]:
    system, value = code.split("|")
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "subject": {"reference": f"Patient/{patient}"},
        "code": {"coding": [{"system": system, "code": value}]},
    }


def service(prefetch: dict[str, str], required: frozenset[str] | None = None) -> CdsService:
    def evaluate(_request: HookRequest, _data: PrefetchData) -> Evaluation:
        return Evaluation()

    return CdsService(
        id="medplum",
        hook="patient-view",
        title="t",
        description="t",
        prefetch=prefetch,
        evaluate=evaluate,
        required_prefetch=frozenset(prefetch) if required is None else required,
    )


def hook_request(base: str, token: str | None = None, **context: Any) -> HookRequest:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": "8b1f7d1e-8f35-4c1b-9d6e-3a0e4b2c1d00",
        "fhirServer": base,
        "context": {"patientId": "p1", "userId": "Practitioner/doc-9", **context},
    }
    if token:
        body["fhirAuthorization"] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 60,
            "scope": "patient/*.read",
            "subject": "cds",
        }
    return HookRequest.model_validate(body)


@pytest.fixture(scope="module")
def client() -> Iterator[FhirClient]:
    with FhirClient(ClientLimits(timeout_s=5.0, max_pages=10)) as instance:
        yield instance


def test_templates_fetch_from_medplum(fhir_store: FhirTestServer, client: FhirClient) -> None:
    fhir_store.load(
        [
            {"resourceType": "Patient", "id": "p1"},
            {"resourceType": "Practitioner", "id": "doc-9"},
            {
                "resourceType": "Encounter",
                "id": "e1",
                "status": "in-progress",
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "IMP",
                },
                "subject": {"reference": "Patient/p1"},
            },
            observation("o1", "p1", WANTED),
            observation("o2", "p1", OTHER),
            observation("o3", "p2", WANTED),
        ]
    )
    svc = service(
        {
            "patient": "Patient/{{context.patientId}}",
            "user": "Practitioner/{{userPractitionerId}}",
            "encounter": "Encounter/{{context.encounterId}}",
            "labs": "Observation?patient={{context.patientId}}&code=" + f"{WANTED},{SNOMED}|1",
        }
    )
    data = resolve(
        svc,
        hook_request(fhir_store.base_url, encounterId="e1"),
        client=client,
        allowed=Allowlist([fhir_store.base_url]),
    )
    assert [r["id"] for r in data.get("patient") or []] == ["p1"]
    assert [r["id"] for r in data.get("user") or []] == ["doc-9"]
    assert [r["id"] for r in data.get("encounter") or []] == ["e1"]
    assert [r["id"] for r in data.get("labs") or []] == ["o1"]


def test_pages_are_followed_on_the_real_server(
    fhir_store: FhirTestServer, client: FhirClient
) -> None:
    fhir_store.load(observation(f"o{i}", "p1", WANTED) for i in range(23))
    result = client.fetch(fhir_store.base_url, "Observation?patient=p1&_count=5", None)
    assert result.pages == 5
    assert not result.truncated
    assert sorted(r["id"] for r in result.resources) == sorted(f"o{i}" for i in range(23))


def test_page_cap_on_the_real_server(fhir_store: FhirTestServer) -> None:
    fhir_store.load(observation(f"o{i}", "p1", WANTED) for i in range(12))
    with FhirClient(ClientLimits(timeout_s=5.0, max_pages=2)) as capped:
        result = capped.fetch(fhir_store.base_url, "Observation?patient=p1&_count=5", None)
    assert result.pages == 2
    assert result.truncated
    assert len(result.resources) == 10


def test_large_record_filtered_on_the_server(
    fhir_store: FhirTestServer, client: FhirClient
) -> None:
    # Thousands of unrelated Observations: the code filter keeps the answer small and fast.
    fhir_store.load(
        [observation(f"n{i}", "p1", OTHER) for i in range(2000)]
        + [observation("hit", "p1", WANTED)]
    )
    svc = service({"labs": f"Observation?patient={{{{context.patientId}}}}&code={WANTED}"})
    started = time.monotonic()
    data = resolve(
        svc,
        hook_request(fhir_store.base_url),
        client=client,
        budget_ms=1500,
        allowed=Allowlist([fhir_store.base_url]),
    )
    assert time.monotonic() - started < 1.5
    assert [r["id"] for r in data.get("labs") or []] == ["hit"]


def test_missing_resource_is_unavailable(fhir_store: FhirTestServer, client: FhirClient) -> None:
    with pytest.raises(FhirError) as caught:
        client.fetch(fhir_store.base_url, "Patient/nobody", None)
    assert "404" in str(caught.value)
    svc = service({"patient": "Patient/{{context.patientId}}"})
    with pytest.raises(DataUnavailable):
        resolve(
            svc,
            hook_request(fhir_store.base_url),
            client=client,
            allowed=Allowlist([fhir_store.base_url]),
        )


@pytest.fixture(scope="module")
def guarded() -> Iterator[FhirTestServer]:
    require_server()
    server = FhirTestServer(token=TOKEN).start()
    try:
        server.load([observation("g1", "p1", WANTED)])
        yield server
    finally:
        server.stop()


def test_bearer_token_reaches_the_server(guarded: FhirTestServer, client: FhirClient) -> None:
    svc = service({"labs": "Observation?patient={{context.patientId}}"})
    data = resolve(
        svc,
        hook_request(guarded.base_url, TOKEN),
        client=client,
        allowed=Allowlist([guarded.base_url]),
    )
    assert [r["id"] for r in data.get("labs") or []] == ["g1"]


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_refused_token(guarded: FhirTestServer, client: FhirClient, token: str | None) -> None:
    with pytest.raises(FhirAuthError):
        client.fetch(guarded.base_url, "Observation?patient=p1", token)
    svc = service({"labs": "Observation?patient={{context.patientId}}"})
    with pytest.raises(DataUnavailable) as caught:
        resolve(
            svc,
            hook_request(guarded.base_url, token),
            client=client,
            allowed=Allowlist([guarded.base_url]),
        )
    assert caught.value.details == [{"prefetchKey": "labs"}]
