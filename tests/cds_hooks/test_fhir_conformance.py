"""``check_resource`` gives ``parse_resource``'s verdict (full R4B validation), cheaper.

The rules count a relevant resource that fails strict R4 validation as read leniently, and an
Encounter that fails it gives no care setting: the verdict matters, so it is checked against
the full validation on every resource of the rules' types in the test corpus (the golden
cases, the synthetic patients, the examples) and on mutations of them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cds_hooks import fhir
from cds_hooks.fhir import InvalidResource, check_resource, parse_resource
from tests.support.paths import ROOT

TYPES = ("Condition", "Observation", "ServiceRequest", "Encounter", "Procedure")


def _resources(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        if value.get("resourceType") in TYPES:
            yield value
        for item in value.values():
            yield from _resources(item)
    elif isinstance(value, list):
        for item in value:
            yield from _resources(item)


def _corpus() -> list[dict[str, Any]]:
    files = [
        *sorted((ROOT / "tests" / "cases").rglob("*.json")),
        *sorted((ROOT / "fhir_profiles" / "patients").glob("*.json")),
        *sorted((ROOT / "docs" / "examples").glob("*.json")),
    ]
    seen: dict[str, dict[str, Any]] = {}
    for path in files:
        for resource in _resources(json.loads(path.read_text(encoding="utf-8"))):
            seen.setdefault(json.dumps(resource, sort_keys=True), resource)
    return list(seen.values())


CORPUS = _corpus()


def verdict(check: Any, resource: dict[str, Any]) -> bool:
    try:
        check(resource, resource["resourceType"])
    except InvalidResource:
        return False
    return True


def test_the_corpus_has_every_type_and_an_invalid_resource() -> None:
    assert {r["resourceType"] for r in CORPUS} == set(TYPES)
    assert len(CORPUS) > 1000
    assert not all(verdict(parse_resource, r) for r in CORPUS)


def test_same_verdict_on_every_resource_of_the_corpus() -> None:
    differing = [r for r in CORPUS if verdict(check_resource, r) != verdict(parse_resource, r)]
    assert differing == []


def test_valid_corpus_resources_need_no_full_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    valid = [r for r in CORPUS if verdict(parse_resource, r)]
    full: list[str] = []

    def counting(data: dict[str, Any], resource_type: str | None = None) -> Any:
        full.append(str(resource_type))
        return parse_resource(data, resource_type)

    monkeypatch.setattr(fhir, "parse_resource", counting)
    assert all(verdict(check_resource, r) for r in valid)
    assert full == []


BASE = {
    "Condition": {
        "resourceType": "Condition",
        "id": "c1",
        "clinicalStatus": {"coding": [{"system": "x", "code": "active"}]},
        "verificationStatus": {"coding": [{"code": "confirmed"}], "text": "Bekreftet"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "414015000"}]},
        "subject": {"reference": "Patient/p"},
        "onsetDateTime": "2026-11-20",
        "recordedDate": "2026-11-21T10:00:00+01:00",
    },
    "Observation": {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "100383-9"}]},
        "subject": {"reference": "Patient/p"},
        "effectiveDateTime": "2026-11-24T10:00:00Z",
        "valueCodeableConcept": {"coding": [{"code": "10828004"}]},
    },
    "ServiceRequest": {
        "resourceType": "ServiceRequest",
        "id": "s1",
        "status": "active",
        "intent": "order",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "0"}]},
        "subject": {"reference": "Patient/p"},
        "authoredOn": "2026-11-24",
    },
    "Procedure": {
        "resourceType": "Procedure",
        "id": "p1",
        "status": "completed",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "0"}]},
        "subject": {"reference": "Patient/p"},
        "performedPeriod": {"start": "2026-11-24T10:00:00Z", "end": "2026-11-24T11:00:00Z"},
    },
    "Encounter": {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
        "subject": {"reference": "Patient/p"},
        "period": {"start": "2026-11-24T10:00:00Z"},
    },
}


DELETE = object()


@pytest.mark.parametrize(
    ("resource_type", "change"),
    [
        ("Condition", {"subject": "Patient/p"}),  # not a Reference
        ("Condition", {"subject": None}),
        ("Condition", {"subject": DELETE}),
        ("Condition", {"onsetString": "i fjor"}),  # a second onset[x]
        ("Condition", {"assertedDate": "2026-11-21"}),  # STU3, not R4
        ("Condition", {"recordedDate": "2026-13-01"}),
        ("Condition", {"code": {"coding": {"code": "x"}}}),
        ("Condition", {"code": {"coding": [None]}}),
        ("Condition", {"code": {"coding": [{"code": " padded"}]}}),
        ("Condition", {"category": [{"text": ""}]}),
        ("Condition", {"note": [{"text": "fritekst"}]}),  # valid, not in the lean model
        ("Condition", {"_recordedDate": {"extension": [{"url": "x", "valueString": "y"}]}}),
        ("Observation", {"status": DELETE}),
        ("Observation", {"status": ""}),
        ("Observation", {"valueString": "påvist"}),  # a second value[x]
        ("Observation", {"effectivePeriod": {"start": "2026-11-24"}}),  # a second effective[x]
        ("Observation", {"issued": "2026-11-24"}),  # an instant needs a time and zone
        ("Observation", {"valueQuantity": {"value": "1.0"}}),
        ("ServiceRequest", {"intent": DELETE}),
        ("ServiceRequest", {"orderDetail": [{"coding": [{"code": 7}]}]}),
        ("Procedure", {"performedDateTime": "2026-11-24"}),  # a second performed[x]
        ("Procedure", {"status": DELETE}),
        ("Procedure", {"usedCode": [{"coding": [{"code": "x"}], "text": 5}]}),
        ("Encounter", {"class": [{"coding": [{"code": "EMER"}]}]}),  # R5's shape
        ("Encounter", {"class": None}),
        ("Encounter", {"class": DELETE}),
        ("Encounter", {"type": [{"coding": [{"code": "x", "userSelected": "yes"}]}]}),
        ("Encounter", {"status": 3}),
        ("Encounter", {"extension": [{"url": "http://example.org/x", "valueBoolean": True}]}),
    ],
)
def test_same_verdict_on_the_edges(resource_type: str, change: dict[str, Any]) -> None:
    resource = copy.deepcopy(BASE[resource_type])
    for key, value in change.items():
        if value is DELETE:
            del resource[key]
        else:
            resource[key] = value
    assert verdict(check_resource, resource) == verdict(parse_resource, resource)


# Values for mutations: the corpus's own (of all shapes), and small wrong ones.
_POOL = sorted(
    {json.dumps(v) for r in CORPUS[:200] for v in r.values()}
    | {json.dumps(r) for r in BASE.values()}
)
values = (
    st.sampled_from(_POOL).map(json.loads)
    | st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.sampled_from(["", " ", "x", "2026-11-24", "2026-11-24T10:00:00Z", "2026-02-30", "a b"])
)
keys = st.sampled_from(
    sorted({k for r in CORPUS for k in r} | {"note", "onsetString", "valueString", "_status"})
)


@st.composite
def mutated(draw: st.DrawFn, base: Any, depth: int = 0) -> Any:
    if not isinstance(base, dict | list) or not base or depth > 3:
        return draw(values)
    result: Any = copy.copy(base)
    index = draw(st.sampled_from(list(result) if isinstance(result, dict) else range(len(result))))
    action = draw(st.sampled_from(["descend", "descend", "replace", "delete", "add"]))
    if action == "delete":
        del result[index]
    elif action == "add" and isinstance(result, dict):
        result[draw(keys) if depth == 0 else draw(st.sampled_from(["code", "text", "x"]))] = draw(
            values
        )
    elif action == "replace":
        result[index] = draw(values)
    else:
        result[index] = draw(mutated(result[index], depth + 1))
    return result


@settings(
    max_examples=800,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_same_verdict_on_mutated_resources(data: st.DataObject) -> None:
    base = data.draw(st.sampled_from([*BASE.values(), *CORPUS[:: max(1, len(CORPUS) // 60)]]))
    resource = base
    for _ in range(data.draw(st.integers(1, 3))):
        resource = data.draw(mutated(resource))
    if not isinstance(resource, dict) or resource.get("resourceType") not in TYPES:
        return
    assert verdict(check_resource, resource) == verdict(parse_resource, resource)


# Dates and times as EHRs send them and as they go wrong: the lean model checks a dateTime or
# an instant in pydantic-core alone, and must never accept one that R4B refuses.
_DATE_PARTS = st.sampled_from(
    [
        *("2026", "0001", "0000", "2026-11", "2026-13", "2026-11-24", "2026-02-29", "2028-02-29"),
        *(
            "2026-02-30",
            "2026-04-31",
            "2026-11-24T",
            "26-11-24",
            "2026-1-24",
            "\uff12\uff10\uff12\uff16",
        ),
    ]
)
_TIME_PARTS = st.sampled_from(
    [
        *("", "T10:00:00", "T10:00", "T23:59:60", "T24:00:00", "T10:00:00.123"),
        *("T10:00:00.1234567", "T10:00:00,5", "T9:00:00", "t10:00:00", " 10:00:00"),
    ]
)
_ZONES = st.sampled_from(["", "Z", "+01:00", "-14:00", "+14:00", "+14:01", "+0100", "z", "\n"])
times = st.builds(lambda d, t, z: d + t + z, _DATE_PARTS, _TIME_PARTS, _ZONES) | st.text(
    alphabet="0123456789-T:+Z.", max_size=26
)
_TIME_FIELDS = [
    ("Condition", ("recordedDate",)),
    ("Condition", ("onsetDateTime",)),
    ("Condition", ("meta", "lastUpdated")),  # an instant
    ("Observation", ("issued",)),  # an instant
    ("Observation", ("effectiveDateTime",)),
    ("Encounter", ("period", "start")),
    ("Procedure", ("performedPeriod", "end")),
    ("ServiceRequest", ("authoredOn",)),
]


@settings(max_examples=600, deadline=None, database=None)
@given(value=times, where=st.sampled_from(_TIME_FIELDS))
def test_same_verdict_on_dates_and_times(value: str, where: tuple[str, tuple[str, ...]]) -> None:
    resource_type, path = where
    resource = copy.deepcopy(BASE[resource_type])
    target = resource
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value
    assert verdict(check_resource, resource) == verdict(parse_resource, resource)


@pytest.mark.parametrize(
    ("value", "lean", "valid"),
    [
        ("2026-11-24", True, True),
        ("2026", True, True),
        ("2026-11-24T10:00:00+01:00", True, True),
        ("2026-11-24T10:00:00.123Z", True, True),
        ("2026-11", False, True),  # R4B decides
        ("2016-12-31T23:59:60Z", False, True),  # a leap second: R4B decides
        ("2026-02-30", False, False),
        ("2026-11-24T10:00:00", False, False),  # a time needs a zone
        ("2026-11-24\n", False, False),
    ],
)
def test_common_times_need_no_full_validation(value: str, lean: bool, valid: bool) -> None:
    resource = copy.deepcopy(BASE["Condition"])
    resource["recordedDate"] = value
    model = fhir._lean_model(fhir.get_fhir_model_class("Condition"))
    try:
        model.model_validate(resource)
    except ValidationError:
        accepted = False
    else:
        accepted = True
    assert accepted is lean
    assert verdict(check_resource, resource) is valid
    assert verdict(parse_resource, resource) is valid
