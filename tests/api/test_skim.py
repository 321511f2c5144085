"""A large body is parsed without the prefetched Conditions the rules do not read
(``plugin.api.skim``), and the answer is the one the whole body gives.

The oracle is the whole parse: ``loads_strict`` of the body, with the prefetch Bundles cut down
to the resources the skim keeps. Every golden case is answered with the same bytes both ways,
also with a long problem list added, and bodies the skim must not read (bad UTF-8, escaped lone
surrogates, what msgspec refuses) are answered as the whole body is.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds_hooks.facts import condition_reader, names_mkopper
from cds_hooks.knowledge import load_knowledge
from cds_hooks.prefetch import resources_of
from plugin.api import views
from plugin.api.json_codec import loads_strict
from plugin.api.skim import skim_body
from tests.support.golden import iter_cases

KNOWLEDGE = load_knowledge(None)
READS = condition_reader(KNOWLEDGE)
UUID = re.compile(rb'"uuid":"[^"]*"')

MKOPPER = {
    "resourceType": "Condition",
    "id": "mk",
    "clinicalStatus": {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                "code": "active",
            }
        ]
    },
    "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "B04"}]},
    "subject": {"reference": "Patient/p1"},
}


def _other(n: int) -> dict[str, Any]:
    """A Condition the rules pass over: text only, not m-kopper."""
    return {
        "resourceType": "Condition",
        "id": f"other-{n}",
        "code": {"text": f"Hypertensjon {n}"},
        "subject": {"reference": "Patient/p1"},
        "note": [{"text": "x" * 200}],
    }


def _bundle(*resources: Any) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"fullUrl": f"urn:uuid:{i}", "resource": r} for i, r in enumerate(resources)],
    }


def _body(conditions: dict[str, Any] | Any, **prefetch: Any) -> bytes:
    return json.dumps(
        {
            "hook": "patient-view",
            "hookInstance": "h1",
            "context": {"patientId": "p1", "userId": "Practitioner/u1"},
            "prefetch": {"conditions": conditions, **prefetch},
        },
        ensure_ascii=False,  # an escaped surrogate pair is left to the whole parse
    ).encode()


def _objects(entries: Any) -> bool:
    return isinstance(entries, list) and all(
        isinstance(e, dict) and isinstance(e.get("resource"), dict | None) for e in entries
    )


def _read(value: Any) -> Any:
    """A prefetch Bundle of objects as the rules read it: the resources, without the Conditions
    whose code they pass over (resources_of, then _read_conditions' first test)."""
    if not (isinstance(value, dict) and value.get("resourceType") == "Bundle"):
        return value
    if not _objects(value.get("entry")):
        return value
    return [
        r
        for r in resources_of(value) or []
        if r.get("resourceType") != "Condition" or names_mkopper(KNOWLEDGE, r.get("code"))
    ]


def _as_read(data: Any) -> Any:
    """The body with each prefetch value as the rules read it."""
    if not isinstance(data, dict) or not isinstance(data.get("prefetch"), dict):
        return data
    return {**data, "prefetch": {k: _read(v) for k, v in data["prefetch"].items()}}


def _oracle(raw: bytes) -> Any:
    """The whole parse, as the rules read it."""
    return _as_read(loads_strict(raw))


def test_a_long_problem_list_keeps_the_condition_the_rules_read() -> None:
    raw = _body(_bundle(*(_other(n) for n in range(500)), MKOPPER, _other(501)))
    skimmed = skim_body(raw, READS)
    assert skimmed is not None
    assert skimmed["prefetch"]["conditions"] == {
        "resourceType": "Bundle",
        "entry": [{"resource": MKOPPER}],
    }
    whole = loads_strict(raw)
    assert {k: v for k, v in skimmed.items() if k != "prefetch"} == {
        k: v for k, v in whole.items() if k != "prefetch"
    }


def test_other_resources_and_values_are_parsed_whole() -> None:
    encounter = {"resourceType": "Encounter", "id": "e1", "status": "in-progress", "n": 10**30}
    observation = {"resourceType": "Observation", "id": "o1", "code": {"text": "Hypertensjon"}}
    raw = _body(
        _bundle(_other(1), MKOPPER),
        encounter=encounter,
        observations=_bundle(observation),
        empty={"resourceType": "Bundle", "type": "searchset"},
        failed=None,
    )
    skimmed = skim_body(raw, READS)
    assert _as_read(skimmed) == _oracle(raw)
    assert skimmed is not None
    assert skimmed["prefetch"]["encounter"] == encounter  # a big integer as the stdlib reads it
    assert skimmed["prefetch"]["observations"] == _bundle(observation)  # no Condition: whole
    assert skimmed["prefetch"]["empty"] == {"resourceType": "Bundle", "type": "searchset"}
    assert skimmed["prefetch"]["failed"] is None


@pytest.mark.parametrize(
    "raw",
    [
        _body(_bundle(_other(1), MKOPPER)).replace(b"Hypertensjon 1", b"Hypertensjon \xff"),
        _body(_bundle(_other(1), MKOPPER)).replace(b"Hypertensjon 1", b"\\ud800"),
        _body(_bundle(_other(1), MKOPPER)).replace(b'"Hypertensjon 1"', b"NaN"),
        _body(_bundle(_other(1), MKOPPER)).replace(b'"Hypertensjon 1"', b"-Infinity"),
        _body(_bundle(_other(1), MKOPPER)).replace(b'"Hypertensjon 1"', b"[" * 2000 + b"]" * 2000),
        b"[1, 2]",
        b'{"hook": "patient-view",',
    ],
    ids=[
        "bad-utf8",
        "lone-surrogate",
        "nan",
        "infinity",
        "deep",
        "not-an-object",
        "truncated",
    ],
)
def test_what_the_skim_must_not_read_is_left_to_the_whole_parse(raw: bytes) -> None:
    assert skim_body(raw, READS) is None


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
RESOURCES = st.fixed_dictionaries(
    {"resourceType": st.sampled_from(["Condition", "Observation", "Encounter", 1])},
    optional={"code": JSON_VALUES | st.just(MKOPPER["code"]), "id": st.text(), "x": JSON_VALUES},
)
ENTRIES = st.lists(
    st.fixed_dictionaries({}, optional={"resource": RESOURCES | JSON_VALUES, "fullUrl": st.text()}),
    max_size=6,
)


def test_fields_beyond_the_spec_are_kept() -> None:
    body = json.loads(_body(_bundle(_other(1), MKOPPER)))
    body["extension"] = {"no.helse-bergen.ward": "M1"}
    raw = json.dumps(body).encode()
    skimmed = skim_body(raw, READS)
    assert _as_read(skimmed) == _oracle(raw)
    assert skimmed is not None
    assert skimmed["extension"] == {"no.helse-bergen.ward": "M1"}
    assert skimmed["prefetch"]["conditions"]["entry"] == [{"resource": MKOPPER}]


def test_a_float_beyond_range_reads_as_the_standard_library_reads_it() -> None:
    raw = _body(_bundle(_other(1), {**MKOPPER, "x": "1e400"})).replace(b'"1e400"', b"1e400")
    skimmed = skim_body(raw, READS)
    assert skimmed is not None
    assert _as_read(skimmed) == _oracle(raw)
    assert skimmed["prefetch"]["conditions"]["entry"][0]["resource"]["x"] == float("inf")


def test_a_bundle_not_of_objects_is_parsed_whole() -> None:
    odd = {
        "resourceType": "Bundle",
        "entry": [{"resource": "not a resource"}, {"resource": MKOPPER}],
    }
    raw = _body(
        _bundle(_other(1), MKOPPER), odd=odd, listed={"resourceType": "Bundle", "entry": {}}
    )
    skimmed = skim_body(raw, READS)
    assert skimmed is not None
    assert skimmed["prefetch"]["odd"] == odd
    assert skimmed["prefetch"]["listed"] == {"resourceType": "Bundle", "entry": {}}
    assert skimmed["prefetch"]["conditions"]["entry"] == [{"resource": MKOPPER}]


@settings(max_examples=300, deadline=None)
@given(entries=ENTRIES | JSON_VALUES, other=JSON_VALUES)
def test_the_skim_is_the_whole_parse_cut_down(entries: Any, other: Any) -> None:
    raw = _body({"resourceType": "Bundle", "entry": entries}, other=other)
    skimmed = skim_body(raw, READS)
    assert _as_read(skimmed) == _oracle(raw)


def _padded(request: dict[str, Any]) -> dict[str, Any]:
    """The request with 400 Conditions the rules pass over added to its problem list."""
    padded = copy.deepcopy(request)
    conditions = (padded.get("prefetch") or {}).get("conditions")
    if isinstance(conditions, dict) and conditions.get("resourceType") == "Bundle":
        entries = conditions.setdefault("entry", [])
        entries[:0] = [{"resource": _other(n)} for n in range(400)]
    return padded


def _answers(client: Any, pad: bool) -> list[bytes]:
    answers = []
    for case in iter_cases():
        body = {
            k: v for k, v in case.request.items() if k not in ("fhirServer", "fhirAuthorization")
        }
        response = client.post(
            f"/cds-services/{case.service_id}", json=_padded(body) if pad else body
        )
        answers.append(UUID.sub(b'"uuid":"*"', response.get_data()) + b" %d" % response.status_code)
    return answers


@pytest.mark.parametrize("pad", [False, True], ids=["as-is", "long-problem-list"])
def test_every_golden_case_is_answered_the_same_skimmed(
    make_app: Any, monkeypatch: pytest.MonkeyPatch, pad: bool
) -> None:
    client = make_app().test_client()
    monkeypatch.setattr(views, "SKIM_FROM_BYTES", 10**12)  # every body parsed whole
    whole = _answers(client, pad)
    monkeypatch.setattr(views, "SKIM_FROM_BYTES", 0)  # every body skimmed
    assert _answers(client, pad) == whole
    assert sum(b'"cards":[{' in answer for answer in whole) > 20
