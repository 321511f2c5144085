"""prefetch.resolve: supplied, null, failed and absent keys; templates; allowlist; 412."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from hypothesis import given
from hypothesis import strategies as st

from cds_hooks.errors import DataUnavailable
from cds_hooks.fhir import Allowlist, FhirClient
from cds_hooks.models import HookRequest
from cds_hooks.prefetch import UnfillableTemplate, fill_template, resolve
from cds_hooks.services import CdsService, Evaluation, PrefetchData
from tests.support.fhir import searchset

BASE = "https://fhir.example.org/r4"
TOKEN = "token-xyz-987"
PATIENT = "pat 4711/æ"  # needs encoding


def service(required: frozenset[str] = frozenset({"conditions"})) -> CdsService:
    def evaluate(_request: HookRequest, _data: PrefetchData) -> Evaluation:
        return Evaluation()

    return CdsService(
        id="test",
        hook="patient-view",
        title="Test",
        description="Test service.",
        prefetch={
            "patient": "Patient/{{context.patientId}}",
            "conditions": "Condition?patient={{context.patientId}}&code=http://snomed.info/sct|1,2",
            "encounters": "Encounter?patient={{context.patientId}}&_count=50",
        },
        evaluate=evaluate,
        required_prefetch=required,
    )


def hook_request(
    prefetch: dict[str, Any] | None = None,
    *,
    server: str | None = BASE,
    token: str | None = TOKEN,
    **context: Any,
) -> HookRequest:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/doc-1", "patientId": PATIENT, **context},
    }
    if server:
        body["fhirServer"] = server
    if server and token:
        body["fhirAuthorization"] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "cds-service",
        }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return HookRequest.model_validate(body)


COND = {"resourceType": "Condition", "id": "c1"}
ENC = {"resourceType": "Encounter", "id": "e1"}
PAT = {"resourceType": "Patient", "id": "p1"}


@pytest.fixture
def client() -> Iterator[FhirClient]:
    with FhirClient() as c:
        yield c


# --- templates ---------------------------------------------------------------


def test_fill_template_encodes_values() -> None:
    context = {"patientId": "a b&c=d/e", "encounterId": "enc-1", "userId": "Practitioner/u 1"}
    template = "Condition?patient={{context.patientId}}&encounter={{ context.encounterId }}"
    assert fill_template(template, context) == "Condition?patient=a%20b%26c%3Dd%2Fe&encounter=enc-1"
    assert fill_template("Practitioner/{{userPractitionerId}}", context) == "Practitioner/u%201"
    assert fill_template("Observation?code=http://loinc.org|1,http://loinc.org|2", context) == (
        "Observation?code=http://loinc.org|1,http://loinc.org|2"
    )


@pytest.mark.parametrize(
    ("template", "context"),
    [
        ("Patient/{{context.patientId}}", {}),
        ("Patient/{{context.patientId}}", {"patientId": ""}),
        ("Patient/{{context.patientId}}", {"patientId": {"nested": 1}}),
        ("Patient/{{context.patientId}}", {"patientId": True}),
        ("PractitionerRole/{{userPractitionerRoleId}}", {"userId": "Practitioner/1"}),
        ("Patient/{{userPatientId}}", {"userId": "Patient/1/extra"}),
        ("X/{{unknownToken}}", {"userId": "Practitioner/1"}),
        ("Patient/{{context.patientId}}", {"patientId": "lone \ud800 surrogate"}),
        ("Encounter/{{context.encounterId}}", {"encounterId": ".."}),
        ("Encounter/{{context.encounterId}}", {"encounterId": "."}),
    ],
)
def test_unfillable_tokens(template: str, context: dict[str, Any]) -> None:
    with pytest.raises(UnfillableTemplate):
        fill_template(template, context)


# --- supplied prefetch -------------------------------------------------------


def test_supplied_null_and_outcome() -> None:
    data = resolve(
        service(),
        hook_request(
            {
                "patient": PAT,
                "conditions": searchset([COND]),
                "encounters": None,
            }
        ),
    )
    assert data.get("patient") == [PAT]
    assert data.get("conditions") == [COND]
    assert data.get("encounters") == []
    assert not data.failed

    data = resolve(
        service(frozenset()),
        hook_request(
            {
                "patient": PAT,
                "conditions": {"resourceType": "OperationOutcome", "issue": []},
                "encounters": None,
            }
        ),
    )
    assert data.failed == {"conditions"}
    assert data.get("conditions") is None


@responses.activate
def test_operation_outcome_is_not_fetched_again(client: FhirClient) -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": []}
    with pytest.raises(DataUnavailable):
        resolve(
            service(),
            hook_request({"patient": PAT, "conditions": outcome, "encounters": None}),
            client=client,
            allowed=Allowlist([BASE]),
        )
    assert len(responses.calls) == 0


# --- fetching absent keys ----------------------------------------------------


@responses.activate
def test_absent_keys_are_fetched_with_filled_templates(client: FhirClient) -> None:
    responses.get(f"{BASE}/Patient/pat%204711%2F%C3%A6", json=PAT)
    responses.get(f"{BASE}/Condition", json=searchset([COND]))
    responses.get(f"{BASE}/Encounter", json=searchset([ENC]))
    data = resolve(
        service(), hook_request({"patient": PAT}), client=client, allowed=Allowlist([BASE])
    )
    assert data.get("patient") == [PAT]  # supplied: not fetched
    assert data.get("conditions") == [COND]
    assert data.get("encounters") == [ENC]
    assert not data.failed
    urls = sorted(call.request.url for call in responses.calls)
    assert len(urls) == 2
    query = parse_qs(urlsplit(next(u for u in urls if "Condition" in u)).query)
    assert query == {"patient": [PATIENT], "code": ["http://snomed.info/sct|1,2"]}
    for call in responses.calls:
        assert call.request.headers["Authorization"] == f"Bearer {TOKEN}"


@responses.activate
def test_failed_fetch_of_a_required_key_is_412_naming_the_key(
    client: FhirClient, caplog: pytest.LogCaptureFixture
) -> None:
    responses.get(f"{BASE}/Condition", status=500, body="diagnosis: secret")
    responses.get(f"{BASE}/Encounter", json=searchset([ENC]))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DataUnavailable) as caught:
        resolve(service(), hook_request({"patient": PAT}), client=client, allowed=Allowlist([BASE]))
    assert caught.value.status == 412
    assert caught.value.details == [{"prefetchKey": "conditions"}]
    text = str(caught.value.to_json()) + caplog.text
    for leak in (TOKEN, "pat 4711", "pat%204711", "secret", "fhir.example.org"):
        assert leak not in text


@responses.activate
def test_failed_fetch_of_an_optional_key_leaves_it_unknown(client: FhirClient) -> None:
    responses.get(f"{BASE}/Condition", json=searchset([COND]))
    responses.get(f"{BASE}/Encounter", status=403)
    data = resolve(
        service(), hook_request({"patient": PAT}), client=client, allowed=Allowlist([BASE])
    )
    assert data.get("conditions") == [COND]
    assert data.failed == {"encounters"}
    assert data.get("encounters") is None


@responses.activate
def test_server_not_on_allowlist_gets_no_call(client: FhirClient) -> None:
    with pytest.raises(DataUnavailable):
        resolve(
            service(),
            hook_request({"patient": PAT}),
            client=client,
            allowed=Allowlist(["https://other.example.org/r4"]),
        )
    with pytest.raises(DataUnavailable):
        resolve(service(), hook_request({"patient": PAT}), client=client, allowed=None)
    data = resolve(
        service(frozenset()),
        hook_request({"patient": PAT}),
        client=client,
        allowed=Allowlist.from_setting("https://other.example.org/r4"),
    )
    assert data.failed == {"conditions", "encounters"}
    assert len(responses.calls) == 0


@responses.activate
def test_setting_string_allowlist(client: FhirClient) -> None:
    responses.get(f"{BASE}/Condition", json=searchset([COND]))
    responses.get(f"{BASE}/Encounter", json=searchset())
    data = resolve(
        service(),
        hook_request({"patient": PAT}),
        client=client,
        allowed=Allowlist.from_setting(f"https://x.example.org, {BASE}/"),
    )
    assert data.get("conditions") == [COND]
    assert data.get("encounters") == []


def test_without_client_or_server_absent_keys_are_unavailable(client: FhirClient) -> None:
    with pytest.raises(DataUnavailable):
        resolve(service(), hook_request({"patient": PAT}))
    with pytest.raises(DataUnavailable):
        resolve(
            service(),
            hook_request({"patient": PAT}, server=None),
            client=client,
            allowed=Allowlist([BASE]),
        )


@responses.activate
def test_no_token_fetches_without_authorization(client: FhirClient) -> None:
    responses.get(f"{BASE}/Condition", json=searchset([COND]))
    responses.get(f"{BASE}/Encounter", json=searchset())
    resolve(
        service(),
        hook_request({"patient": PAT}, token=None),
        client=client,
        allowed=Allowlist([BASE]),
    )
    assert all("Authorization" not in c.request.headers for c in responses.calls)


@responses.activate
def test_unfillable_template_key_is_unavailable(client: FhirClient) -> None:
    svc = CdsService(
        id="t",
        hook="patient-view",
        title="t",
        description="t",
        prefetch={"role": "PractitionerRole/{{userPractitionerRoleId}}"},
        evaluate=lambda _r, _d: Evaluation(),
        required_prefetch=frozenset({"role"}),
    )
    with pytest.raises(DataUnavailable) as caught:
        resolve(svc, hook_request(), client=client, allowed=Allowlist([BASE]))
    assert caught.value.details == [{"prefetchKey": "role"}]
    assert len(responses.calls) == 0


# --- properties --------------------------------------------------------------


@given(value=st.text(min_size=1, max_size=40).filter(lambda v: v not in (".", "..")))
def test_filled_values_cannot_change_the_query(value: str) -> None:
    filled = fill_template("Condition?patient={{context.patientId}}&code=a|b", {"patientId": value})
    query = parse_qs(urlsplit(filled).query, keep_blank_values=True)
    assert query["patient"] == [value]
    assert query["code"] == ["a|b"]
    assert set(query) == {"patient", "code"}
