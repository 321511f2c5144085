"""Facts from raw FHIR: status, laboratory, care setting, orders, malformed data."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_hooks.cards import RenderContext, render_cards
from cds_hooks.facts import Basis, CareSetting, Sources, Status, derive_facts, names_mkopper
from cds_hooks.knowledge import default_content_path, load_knowledge
from cds_hooks.rules import Finding

SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
VOLVEN = "urn:oid:2.16.578.1.12.4.1.1.8406"
VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CLIN = "http://terminology.hl7.org/CodeSystem/condition-clinical"
INTERP = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


@pytest.fixture(scope="module")
def knowledge() -> Any:
    return load_knowledge()


def condition(
    code: dict[str, Any], ver: str | None = "confirmed", clin: str | None = "active", **extra: Any
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p"},
        "code": code,
        **extra,
    }
    if ver:
        resource["verificationStatus"] = {"coding": [{"system": VER, "code": ver}]}
    if clin:
        resource["clinicalStatus"] = {"coding": [{"system": CLIN, "code": clin}]}
    return resource


def observation(
    oid: str, value: str | None, when: str | None, *, interpretation: str | None = None
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "100383-9"}]},
    }
    if value:
        resource["valueCodeableConcept"] = {"coding": [{"system": SCT, "code": value}]}
    if interpretation:
        resource["interpretation"] = [{"coding": [{"system": INTERP, "code": interpretation}]}]
    if when:
        resource["effectiveDateTime"] = when
    return resource


def order(code: str, system: str = SCT, status: str = "draft", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": f"sr-{code}",
        "status": status,
        "intent": "order",
        "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"system": system, "code": code}]},
        **extra,
    }


MPOX = {"coding": [{"system": SCT, "code": "359814004"}]}


# --- Names of m-kopper -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Mpox",
        "mistenkt MPOX-infeksjon",
        "M-kopper",
        "m\u2011kopper",  # non-breaking hyphen
        "Apekopper",
        "apekoppar",
        "Apekoppevirus påvist",
        "Monkeypox",
        "MPXV PCR",
    ],
)
def test_free_text_names_mkopper(knowledge: Any, text: str) -> None:
    assert names_mkopper(knowledge, {"text": text})
    assert names_mkopper(knowledge, {"coding": [{"system": "urn:local", "display": text}]})


@pytest.mark.parametrize("text", ["Vannkopper", "kopper", "Kopper (variola)", "Pneumoni", ""])
def test_free_text_does_not_name_other_pox(knowledge: Any, text: str) -> None:
    assert not names_mkopper(knowledge, {"text": text})


@pytest.mark.parametrize(
    ("system", "code", "expected"),
    [
        ("http://hl7.org/fhir/sid/icd-10", "B04", True),
        ("http://hl7.org/fhir/sid/icd-10-no", "B04", True),
        ("urn:oid:2.16.578.1.12.4.1.1.7110", "B04", True),
        ("http://hl7.org/fhir/sid/icd-10-no", "B040", True),
        ("http://hl7.org/fhir/sid/icd-10", "B04.9", True),
        ("urn:local:icd10", "b04.x", True),
        (None, "B04", True),
        (SCT, "359814004", True),
        ("http://hl7.org/fhir/sid/icd-10", "B08.0", False),
        ("http://hl7.org/fhir/sid/icd-10", "B041X", False),
        (SCT, "59774002", False),  # the organism, not the disorder
        (SCT, "414015000", False),  # TERMINOLOGY.md: do not use as known
        ("urn:local:other", "B04", False),
    ],
)
def test_codes_name_mkopper(knowledge: Any, system: str | None, code: str, expected: bool) -> None:
    coding = {"code": code} if system is None else {"system": system, "code": code}
    assert names_mkopper(knowledge, {"coding": [coding]}) is expected


# --- Status from Conditions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ver", "clin", "expected"),
    [
        ("confirmed", "active", Status.CONFIRMED),
        ("confirmed", "recurrence", Status.CONFIRMED),
        ("confirmed", "relapse", Status.CONFIRMED),
        ("provisional", "active", Status.SUSPECTED),
        ("unconfirmed", "active", Status.SUSPECTED),
        ("differential", "active", Status.SUSPECTED),
        (None, "active", Status.SUSPECTED),  # absent: suspected, never confirmed
        ("refuted", "active", Status.NONE),
        ("entered-in-error", None, Status.NONE),
        ("confirmed", "inactive", Status.NONE),
        ("confirmed", "remission", Status.NONE),
        ("confirmed", "resolved", Status.NONE),
        ("confirmed", None, Status.CONFIRMED),  # absent clinicalStatus: still active
    ],
)
def test_condition_status(
    knowledge: Any, ver: str | None, clin: str | None, expected: Status
) -> None:
    facts = derive_facts(knowledge, Sources(conditions=[condition(MPOX, ver, clin)]))
    assert facts.status is expected
    assert facts.status_evidence == (("Condition/c1",) if expected is not Status.NONE else ())


def test_absent_clinical_status_with_abatement_is_not_active(knowledge: Any) -> None:
    resource = condition(MPOX, "confirmed", None, abatementDateTime="2025-03-01")
    assert derive_facts(knowledge, Sources(conditions=[resource])).status is Status.NONE


def test_strongest_condition_wins(knowledge: Any) -> None:
    refuted = condition(MPOX, "refuted", id="c1")
    suspected = condition({"text": "apekopper"}, "provisional", id="c2")
    facts = derive_facts(knowledge, Sources(conditions=[refuted, suspected]))
    assert facts.status is Status.SUSPECTED
    assert facts.status_evidence == ("Condition/c2",)


def test_malformed_mkopper_condition_is_read_leniently_and_counted(knowledge: Any) -> None:
    broken = condition(MPOX, "confirmed")
    broken["subject"] = "Patient/p"  # not a Reference
    unrelated_broken = {"resourceType": "Condition", "code": {"text": "Pneumoni"}, "subject": 1}
    facts = derive_facts(
        knowledge, Sources(conditions=[broken, unrelated_broken, "not a resource", None])
    )
    # It names m-kopper, so it is not silently dropped: the fields the rules need are read.
    assert facts.status is Status.CONFIRMED
    # Only the m-kopper Condition is validated (filter by code first); so only it is counted.
    assert facts.read_leniently == 1
    assert facts.skipped == 0


def test_no_data_is_unknown_not_no(knowledge: Any) -> None:
    facts = derive_facts(knowledge, Sources())
    assert facts.status is Status.NONE
    assert facts.care_setting is CareSetting.UNKNOWN
    assert facts.aerosol_procedure_ordered is None
    assert facts.mkopper_test_ordered is None
    assert facts.respiratory_symptoms is None


# --- Laboratory ------------------------------------------------------------------------------


def test_positive_result_confirms_without_condition(knowledge: Any) -> None:
    facts = derive_facts(
        knowledge, Sources(observations=[observation("o1", "10828004", "2025-03-01")])
    )
    assert facts.status is Status.CONFIRMED
    assert facts.status_evidence == ("Observation/o1",)


def test_negative_after_positive_withdraws_laboratory_confirmation(knowledge: Any) -> None:
    results = [
        observation("o1", "260373001", "2025-03-01T08:00:00Z"),
        observation("o2", "260385009", "2025-03-05T08:00:00Z"),
    ]
    facts = derive_facts(knowledge, Sources(observations=results))
    assert facts.status is Status.NONE
    assert facts.laboratory_negative_after_positive


def test_negative_result_does_not_withdraw_a_clinicians_condition(knowledge: Any) -> None:
    results = [
        observation("o1", "260373001", "2025-03-01"),
        observation("o2", "260415000", "2025-03-05"),
    ]
    facts = derive_facts(
        knowledge,
        Sources(conditions=[condition(MPOX, "provisional")], observations=results),
    )
    assert facts.status is Status.SUSPECTED


def test_time_order_not_list_order_decides(knowledge: Any) -> None:
    results = [
        observation("o2", "260415000", "2025-03-01T12:00:00+01:00"),
        observation("o1", "260373001", "2025-03-01T12:30:00+01:00"),
    ]
    facts = derive_facts(knowledge, Sources(observations=results))
    assert facts.status is Status.CONFIRMED


def test_positive_wins_a_tie_and_undated_results_sort_first(knowledge: Any) -> None:
    tie = [
        observation("o1", "260373001", "2025-03-01"),
        observation("o2", "260415000", "2025-03-01"),
    ]
    assert derive_facts(knowledge, Sources(observations=tie)).status is Status.CONFIRMED
    undated_positive = [
        observation("o1", "260373001", None),
        observation("o2", "260415000", "2025-03-01"),
    ]
    assert derive_facts(knowledge, Sources(observations=undated_positive)).status is Status.NONE


def test_interpretation_is_the_fallback(knowledge: Any) -> None:
    pos = observation("o1", None, "2025-03-01", interpretation="POS")
    assert derive_facts(knowledge, Sources(observations=[pos])).status is Status.CONFIRMED
    inconclusive = observation("o1", "419984006", "2025-03-01")
    assert derive_facts(knowledge, Sources(observations=[inconclusive])).status is Status.NONE


def test_entered_in_error_and_other_tests_do_not_count(knowledge: Any) -> None:
    wrong = observation("o1", "260373001", "2025-03-01")
    wrong["status"] = "entered-in-error"
    other_test = observation("o2", "260373001", "2025-03-01")
    other_test["code"] = {"coding": [{"system": LOINC, "code": "100384-7"}]}
    facts = derive_facts(knowledge, Sources(observations=[wrong, other_test]))
    assert facts.status is Status.NONE


# --- Care setting ----------------------------------------------------------------------------


def encounter(klass: Any, eid: str = "e1", status: str = "in-progress") -> dict[str, Any]:
    return {"resourceType": "Encounter", "id": eid, "status": status, "class": klass}


@pytest.mark.parametrize(
    ("klass", "expected"),
    [
        ({"system": ACT, "code": "AMB"}, CareSetting.OUTPATIENT),
        ({"system": ACT, "code": "HH"}, CareSetting.HOME),
        ({"system": ACT, "code": "EMER"}, CareSetting.EMERGENCY),
        ({"system": ACT, "code": "IMP"}, CareSetting.INPATIENT),
        ({"system": ACT, "code": "OBSENC"}, CareSetting.INPATIENT),
        ({"system": ACT, "code": "FLD"}, CareSetting.FIELD),
        ({"system": ACT, "code": "VR"}, CareSetting.VIRTUAL),
        ({"system": VOLVEN, "code": "1"}, CareSetting.INPATIENT),
        ({"system": VOLVEN, "code": "2"}, CareSetting.OUTPATIENT),
        ({"system": VOLVEN, "code": "3"}, CareSetting.OUTPATIENT),
        ({"system": "urn:local", "code": "IMP"}, CareSetting.UNKNOWN),
        ([{"coding": [{"system": ACT, "code": "IMP"}]}], CareSetting.INPATIENT),  # R5
        (
            [
                {"coding": [{"system": ACT, "code": "AMB"}]},
                {"coding": [{"system": ACT, "code": "IMP"}]},
            ],
            CareSetting.INPATIENT,  # most demanding wins
        ),
    ],
)
def test_care_setting(knowledge: Any, klass: Any, expected: CareSetting) -> None:
    facts = derive_facts(knowledge, Sources(encounters=[encounter(klass)], encounter_id="e1"))
    assert facts.care_setting is expected


def test_care_setting_from_the_hook_encounter_only(knowledge: Any) -> None:
    encounters = [
        encounter({"system": ACT, "code": "IMP"}, "other"),
        encounter({"system": ACT, "code": "AMB"}, "e1"),
    ]
    facts = derive_facts(knowledge, Sources(encounters=encounters, encounter_id="e1"))
    assert facts.care_setting is CareSetting.OUTPATIENT
    assert facts.care_setting_evidence == ("Encounter/e1",)
    ambiguous = derive_facts(knowledge, Sources(encounters=encounters, encounter_id=None))
    assert ambiguous.care_setting is CareSetting.UNKNOWN


def test_malformed_or_cancelled_encounter_is_unknown(knowledge: Any) -> None:
    malformed = encounter({"system": ACT, "code": "IMP"})
    malformed["status"] = 7
    facts = derive_facts(knowledge, Sources(encounters=[malformed], encounter_id="e1"))
    assert facts.care_setting is CareSetting.UNKNOWN and facts.skipped == 1
    cancelled = encounter({"system": ACT, "code": "IMP"}, status="cancelled")
    facts = derive_facts(knowledge, Sources(encounters=[cancelled], encounter_id="e1"))
    assert facts.care_setting is CareSetting.UNKNOWN


# --- Orders ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "aerosol"),
    [
        (order("112798008"), True),
        (order("16883004"), True),
        (order("271280005"), True),
        (order("10847001"), True),
        (order("428311008"), True),
        (order("40617009"), True),
        (order("371907003"), False),
        (
            order("371907003", orderDetail=[{"coding": [{"system": SCT, "code": "426854004"}]}]),
            True,
        ),
        (order("47545007"), False),  # secondary source only, off by default
        (order("10847001", status="revoked"), False),
        (order("10847001", status="completed"), False),
    ],
)
def test_aerosol_generating_orders(knowledge: Any, resource: dict[str, Any], aerosol: bool) -> None:
    facts = derive_facts(knowledge, Sources(orders=[resource]))
    assert facts.aerosol_procedure_ordered is aerosol


def test_mkopper_test_order_means_suspicion(knowledge: Any) -> None:
    facts = derive_facts(knowledge, Sources(orders=[order("100383-9", LOINC)]))
    assert facts.mkopper_test_ordered is True
    assert facts.status is Status.SUSPECTED
    assert facts.status_evidence == ("ServiceRequest/sr-100383-9",)


def test_other_resources_in_draft_orders_are_ignored(knowledge: Any) -> None:
    medication = {"resourceType": "MedicationRequest", "status": "draft", "intent": "order"}
    facts = derive_facts(knowledge, Sources(orders=[medication]))
    assert facts.aerosol_procedure_ordered is False
    assert facts.mkopper_test_ordered is False
    assert facts.skipped == 0


def test_secondary_aerosol_procedures_when_content_includes_them(tmp_path: Path) -> None:
    text = default_content_path().read_text(encoding="utf-8")
    flag = "include_secondary_aerosol_procedures = false"
    assert flag in text
    path = tmp_path / "content.toml"
    path.write_text(text.replace(flag, "include_secondary_aerosol_procedures = true"), "utf-8")
    knowledge = load_knowledge(path)
    for code in ("48387007", "89666000", "47545007", "56251003"):
        facts = derive_facts(knowledge, Sources(orders=[order(code)]))
        assert facts.aerosol_procedure_ordered is True, code


# --- Hostile data never crashes --------------------------------------------------------------


_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=12)
_json = st.recursive(
    _leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
# Resources that look enough like ours to pass the code filter, with anything elsewhere.
_resource = st.fixed_dictionaries(
    {
        "resourceType": st.sampled_from(
            ["Condition", "Observation", "Encounter", "ServiceRequest"]
        ),
        "code": st.sampled_from(
            [
                MPOX,
                {"text": "apekopper"},
                {"coding": [{"system": LOINC, "code": "100383-9"}]},
                {"coding": [{"system": SCT, "code": "10847001"}]},
            ]
        ),
    },
    optional={
        "id": _json,
        "status": _json,
        "class": _json,
        "type": _json,
        "verificationStatus": _json,
        "clinicalStatus": _json,
        "valueCodeableConcept": _json,
        "effectiveDateTime": _json,
        "orderDetail": _json,
        "subject": _json,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    resources=st.lists(_resource | _json, max_size=5), encounter_id=st.none() | st.text(max_size=4)
)
def test_hostile_resources_never_crash(
    knowledge: Any, resources: list[Any], encounter_id: str | None
) -> None:
    facts = derive_facts(
        knowledge,
        Sources(
            conditions=resources,
            observations=resources,
            encounters=resources,
            encounter_id=encounter_id,
            orders=resources,
        ),
    )
    # Whatever arrives, a status other than none rests on named evidence, and what was left
    # out is counted, never more than what came in.
    assert (facts.status is Status.NONE) or facts.status_evidence
    assert all(isinstance(ref, str) and ref for ref in facts.status_evidence)
    assert 0 <= facts.skipped <= 4 * len(resources)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    resources=st.lists(_resource | _json, max_size=5), encounter_id=st.none() | st.text(max_size=4)
)
def test_a_service_reads_the_same_facts_of_a_suspected_or_confirmed_patient(
    knowledge: Any, resources: list[Any], encounter_id: str | None
) -> None:
    # only_if_active leaves steps out for a patient without m-kopper, and nothing else: the
    # status is the same, and the facts of a suspected or confirmed patient are all the same.
    sources = Sources(
        conditions=resources,
        observations=resources,
        encounters=resources,
        encounter_id=encounter_id,
        orders=resources,
        procedures=resources,
        notifications=resources,
    )
    whole = derive_facts(knowledge, sources)
    read = derive_facts(knowledge, sources, only_if_active=True)
    assert read.status is whole.status
    if whole.active:
        assert read == whole
    else:
        assert read.skipped <= whole.skipped and read.read_leniently <= whole.read_leniently


def test_without_m_kopper_the_encounter_and_aerosol_orders_are_not_read(knowledge: Any) -> None:
    malformed = encounter({"system": ACT, "code": "IMP"})
    malformed["status"] = 7
    broken_order = order("10847001", subject="Patient/p")  # not a Reference: fails strict R4
    sources = Sources(encounters=[malformed], encounter_id="e1", orders=[broken_order])
    whole = derive_facts(knowledge, sources)
    assert (whole.skipped, whole.read_leniently) == (1, 1)
    read = derive_facts(knowledge, sources, only_if_active=True)
    assert read.status is Status.NONE
    assert (read.skipped, read.read_leniently) == (0, 0)
    assert read.care_setting is CareSetting.UNKNOWN


def test_a_test_order_makes_the_aerosol_orders_count_again(knowledge: Any) -> None:
    # The same broken aerosol order, now beside an m-kopper test order: the patient is
    # suspected, so the order is validated and counted as read leniently, as without the flag.
    broken_order = order("10847001", subject="Patient/p")
    sources = Sources(orders=[broken_order, order("100383-9", LOINC)])
    read = derive_facts(knowledge, sources, only_if_active=True)
    assert read.status is Status.SUSPECTED
    assert read.read_leniently == 1
    assert read == derive_facts(knowledge, sources)


# --- Free text as people type it (issue: case detection on real records) ----------------------


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("Mistenkt M–kopper", True),  # en dash
        ("Mistenkt M—kopper", True),  # em dash
        ("Mistenkt M\u2011kopper", True),  # non-breaking hyphen
        ("Mistenkt M\u2212kopper", True),  # minus sign
        ("M\u00adkopper", True),  # soft hyphen
        ("m kopper", True),
        ("mkopper", True),
        ("Ｍｐｏｘ", True),  # full-width letters (NFKC)
        ("Apekoppar", True),  # nynorsk
        ("m-koppar", True),
        ("kopper", False),  # smallpox
        ("Vannkopper", False),  # chickenpox
        ("Rom kopper", False),
        ("Mpox utelukket", False),
        ("M-kopper avkreftet", False),
        ("ikke m-kopper", False),
        ("Ingen tegn på mpox", False),
        ("Mistanke om mpox avkreftet", False),
        ("Mpox negativ", False),
        ("mpox-vaksinert", False),
        ("vaksine mot mpox", False),
        # A trigger's scope ends at a clause: these are suspected cases.
        ("Mistenkt mpox, ikke bekreftet", True),
        ("Ikke feber. Mpox mistenkt", True),
        ("Mistenkt mpox, negativ for HSV", True),
        ("Mpox, men ikke påvist ennå", True),
    ],
)
def test_free_text_is_read_as_people_type_it(knowledge: Any, text: str, names: bool) -> None:
    from cds_hooks.facts import text_names_mkopper

    assert text_names_mkopper(knowledge.content.matching, text) is names


def test_negating_text_rules_out_a_coded_condition(knowledge: Any) -> None:
    from cds_hooks.facts import names_mkopper

    code = next(iter(knowledge.valueset("mkopper-diagnosis").codes))
    coded = {"coding": [{"system": code[0], "code": code[1]}]}
    assert names_mkopper(knowledge, coded)
    assert not names_mkopper(knowledge, {**coded, "text": "Mpox utelukket"})
    assert names_mkopper(knowledge, {**coded, "text": "Mistenkt mpox"})


def test_negation_triggers_must_be_lower_case_words() -> None:
    from pydantic import ValidationError

    from cds_hooks.knowledge import Matching

    with pytest.raises(ValidationError):
        Matching(negation_before=("Utelukket",))
    with pytest.raises(ValidationError):
        Matching(negation_after=(" ",))
    assert Matching(negation_after=("vaksin*",)).negation_after == ("vaksin*",)


# --- What counts as a case on real records (issue 14) -----------------------------------------


@pytest.mark.parametrize(
    ("ver", "clin", "expected"),
    [
        ({"coding": [{"code": "confirmed"}]}, None, Status.CONFIRMED),
        ({"coding": [{"code": "refuted"}]}, None, Status.NONE),
        ({"coding": [{"code": "provisional"}]}, None, Status.SUSPECTED),
        ({"text": "Bekreftet"}, None, Status.CONFIRMED),
        ({"text": "avkreftet"}, None, Status.NONE),
        ({"text": "Mistenkt"}, None, Status.SUSPECTED),
        ({"coding": [{"display": "bekreftet"}]}, None, Status.CONFIRMED),
        # Unknown is never read as confirmed.
        ({"text": "sikker"}, None, Status.SUSPECTED),
        ({"coding": [{"system": "urn:local", "code": "confirmed"}]}, None, Status.SUSPECTED),
        ({"coding": [{"code": "bekreftet-ish"}]}, None, Status.SUSPECTED),
        ({"coding": [{"code": "confirmed"}]}, {"coding": [{"code": "resolved"}]}, Status.NONE),
        ({"coding": [{"code": "confirmed"}]}, {"text": "Løst"}, Status.NONE),
        ({"coding": [{"code": "confirmed"}]}, {"text": "inaktiv"}, Status.NONE),
        ({"coding": [{"code": "confirmed"}]}, {"text": "Aktiv"}, Status.CONFIRMED),
    ],
)
def test_statuses_as_ehrs_send_them(
    knowledge: Any, ver: dict[str, Any], clin: dict[str, Any] | None, expected: Status
) -> None:
    resource = condition(MPOX, None, None, verificationStatus=ver)
    if clin is not None:
        resource["clinicalStatus"] = clin
    facts = derive_facts(knowledge, Sources(conditions=[resource]))
    assert facts.status is expected


NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)


def text_observation(oid: str, value: str, when: str, code: dict[str, Any] | None = None) -> Any:
    resource = observation(oid, None, when)
    resource["valueString"] = value
    if code is not None:
        resource["code"] = code
    return resource


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Påvist", Status.CONFIRMED),
        ("MPXV DNA påvist", Status.CONFIRMED),
        ("positiv", Status.CONFIRMED),
        ("Detected", Status.CONFIRMED),
        ("Ikke påvist", Status.NONE),
        ("negativ", Status.NONE),
        ("Not detected", Status.NONE),
        ("usikker", Status.NONE),
        ("Inkonklusiv", Status.NONE),
        ("inconclusive", Status.NONE),
        ("se kommentar", Status.NONE),
    ],
)
def test_value_string_results(knowledge: Any, value: str, expected: Status) -> None:
    facts = derive_facts(
        knowledge,
        Sources(observations=[text_observation("o1", value, "2026-12-01")], now=NOW),
    )
    assert facts.status is expected


def test_value_codeable_concept_text_only(knowledge: Any) -> None:
    resource = observation("o1", None, "2026-12-01")
    resource["valueCodeableConcept"] = {"text": "Påvist"}
    facts = derive_facts(knowledge, Sources(observations=[resource], now=NOW))
    assert facts.status is Status.CONFIRMED


def test_local_test_code_counts_when_its_text_names_mkopper(knowledge: Any) -> None:
    local = {"coding": [{"system": "urn:oid:2.16.578.1.12.4.1.1.9999", "code": "MPX"}]}
    named = {**local, "text": "Mpox-virus DNA (PCR)"}
    other = {**local, "text": "Vannkopper (VZV) DNA"}
    assert (
        derive_facts(
            knowledge, Sources(observations=[text_observation("o1", "påvist", "2026-12-01", named)])
        ).status
        is Status.CONFIRMED
    )
    for code in (local, other):
        facts = derive_facts(
            knowledge, Sources(observations=[text_observation("o1", "påvist", "2026-12-01", code)])
        )
        assert facts.status is Status.NONE


def test_inconclusive_after_positive_never_undoes_it(knowledge: Any) -> None:
    positive = observation("o1", "260373001", "2026-11-28")
    inconclusive = observation("o2", "419984006", "2026-11-30")
    usikker = text_observation("o3", "usikker", "2026-12-01")
    facts = derive_facts(
        knowledge, Sources(observations=[positive, inconclusive, usikker], now=NOW)
    )
    assert facts.status is Status.CONFIRMED
    assert facts.status_evidence == ("Observation/o1",)
    assert facts.laboratory_negative_after_positive is False


def test_positive_orthopoxvirus_test_is_suspected_not_confirmed(knowledge: Any) -> None:
    ortho = observation("o1", "260373001", "2026-12-01")
    ortho["code"] = {"coding": [{"system": LOINC, "code": "100434-0"}]}
    assert derive_facts(knowledge, Sources(observations=[ortho])).status is Status.SUSPECTED
    mpox = observation("o2", "260373001", "2026-12-01")
    assert derive_facts(knowledge, Sources(observations=[mpox])).status is Status.CONFIRMED


def test_lookback_window_from_the_calls_clock(knowledge: Any) -> None:
    days = knowledge.content.matching.laboratory_lookback_days
    assert days == 42
    inside = (NOW - dt.timedelta(days=days - 1)).isoformat()
    outside = (NOW - dt.timedelta(days=days + 1)).isoformat()
    facts = derive_facts(
        knowledge, Sources(observations=[observation("o1", "10828004", inside)], now=NOW)
    )
    assert facts.status is Status.CONFIRMED
    facts = derive_facts(
        knowledge, Sources(observations=[observation("o1", "10828004", outside)], now=NOW)
    )
    assert facts.status is Status.NONE
    assert facts.laboratory_outside_window == 1
    # A 2022 PCR is not a case today.
    old = observation("o1", "10828004", "2022-08-01")
    assert derive_facts(knowledge, Sources(observations=[old], now=NOW)).status is Status.NONE


def test_resolved_or_refuted_condition_not_brought_back_by_older_positive(knowledge: Any) -> None:
    positive = observation("o1", "10828004", "2026-11-20")
    for ver, clin in (("refuted", "active"), ("confirmed", "resolved")):
        ruled_out = condition(MPOX, ver, clin, recordedDate="2026-11-25")
        facts = derive_facts(
            knowledge, Sources(conditions=[ruled_out], observations=[positive], now=NOW)
        )
        assert facts.status is Status.NONE, (ver, clin)
    # A positive result after the Condition was resolved is new evidence.
    later = observation("o2", "10828004", "2026-11-30")
    resolved = condition(MPOX, "confirmed", "resolved", recordedDate="2026-11-25")
    facts = derive_facts(knowledge, Sources(conditions=[resolved], observations=[later], now=NOW))
    assert facts.status is Status.CONFIRMED


@pytest.mark.parametrize(
    ("text", "case"),
    [
        ("Nærkontakt med mpox-smittet", False),
        ("Kontakt med m-kopper", False),
        ("Eksponert for M–kopper", False),
        ("Mistenkt m-kopper", True),
    ],
)
def test_exposure_is_not_disease(knowledge: Any, text: str, case: bool) -> None:
    facts = derive_facts(knowledge, Sources(conditions=[condition({"text": text}, "provisional")]))
    assert facts.active is case


def test_malformed_mkopper_observation_is_read_leniently(knowledge: Any) -> None:
    broken = observation("o1", "10828004", "2026-12-01")
    broken["subject"] = "Patient/p"  # not a Reference
    facts = derive_facts(knowledge, Sources(observations=[broken], now=NOW))
    assert facts.status is Status.CONFIRMED
    assert facts.read_leniently == 1


# --- The evidence line: kind and date, never a name or an id -------------------------------------


def test_basis_names_kind_date_and_status(knowledge: Any) -> None:
    positive = observation("o1", "260373001", "2026-11-24T10:00:00+01:00")
    facts = derive_facts(knowledge, Sources(observations=[positive], now=NOW))
    assert facts.basis == Basis("laboratory", dt.date(2026, 11, 24), Status.CONFIRMED)
    suspected = condition(MPOX, "provisional", recordedDate="2026-11-20")
    facts = derive_facts(knowledge, Sources(conditions=[suspected]))
    assert facts.basis == Basis("diagnosis", dt.date(2026, 11, 20), Status.SUSPECTED)
    # The strongest status decides which evidence the line names.
    facts = derive_facts(knowledge, Sources(conditions=[suspected], observations=[positive]))
    assert facts.basis is not None and facts.basis.kind == "laboratory"
    assert derive_facts(knowledge, Sources()).basis is None


def test_card_carries_the_evidence_line_without_ids(knowledge: Any) -> None:
    basis = Basis("laboratory", dt.date(2026, 11, 24), Status.CONFIRMED)
    finding = Finding("infectious-period", ("Observation/obs-secret-id",), basis)
    [issued] = render_cards(knowledge, [finding], RenderContext(patient_id="p-secret"))
    detail = issued.card.detail or ""
    assert "Grunnlag: prøvesvar påvist 24.11.2026 (bekreftet)" in detail
    assert "secret" not in detail
    undated = Finding("infectious-period", (), Basis("diagnosis", None, Status.SUSPECTED))
    [issued] = render_cards(knowledge, [undated], RenderContext(patient_id="p"), language="en")
    assert "Based on: diagnosis recorded undated (suspected)" in (issued.card.detail or "")


# --- Aerosol-generating Procedures (5.2): in progress, or ended within the window -------------

NOW = dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.UTC)
TOPIC = "https://mkopper-cds.example/fhir/CodeSystem/card-topic"


def procedure(status: str, *, code: str = "112798008", **when: Any) -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "id": "proc-1",
        "status": status,
        "subject": {"reference": "Patient/p"},
        "code": {"coding": [{"system": SCT, "code": code}]},
        **when,
    }


@pytest.mark.parametrize(
    ("resource", "now", "performed"),
    [
        (procedure("in-progress", performedDateTime="2026-11-01T08:00:00Z"), NOW, True),
        (procedure("preparation"), None, True),
        # The window is 24 hours (content): 23 hours ago counts, 25 hours ago does not.
        (procedure("completed", performedDateTime="2026-11-24T11:00:00Z"), NOW, True),
        (procedure("completed", performedDateTime="2026-11-24T09:00:00Z"), NOW, False),
        # A period counts from its end: started two days ago, ended an hour ago.
        (
            procedure(
                "stopped",
                performedPeriod={"start": "2026-11-23T09:00:00Z", "end": "2026-11-25T09:00:00Z"},
            ),
            NOW,
            True,
        ),
        # Without the call's clock nothing ended can be called recent.
        (procedure("completed", performedDateTime="2026-11-25T09:00:00Z"), None, False),
        (procedure("completed"), NOW, False),  # undated
        (procedure("not-done", performedDateTime="2026-11-25T09:00:00Z"), NOW, False),
        (procedure("entered-in-error"), NOW, False),
        # Tracheostomy is aerosol-generating in secondary sources only: off in the shipped content.
        (procedure("in-progress", code="48387007"), NOW, False),
        # Nasal oxygen counts as high flow only (device in usedCode).
        (procedure("in-progress", code="371907003"), NOW, False),
        (
            procedure(
                "in-progress",
                code="371907003",
                usedCode=[{"coding": [{"system": SCT, "code": "426854004"}]}],
            ),
            NOW,
            True,
        ),
    ],
)
def test_aerosol_generating_procedures(
    knowledge: Any, resource: dict[str, Any], now: dt.datetime | None, performed: bool
) -> None:
    facts = derive_facts(knowledge, Sources(procedures=[resource], now=now))
    assert facts.aerosol_procedure_performed is performed
    assert facts.aerosol_procedure_performed_evidence == (
        ("Procedure/proc-1",) if performed else ()
    )


def test_procedures_not_asked_are_unknown(knowledge: Any) -> None:
    assert derive_facts(knowledge, Sources()).aerosol_procedure_performed is None


# --- A recorded notification (8) ----------------------------------------------------------------


def communication(
    sent: str | None = "2026-11-24T09:30:00Z",
    *,
    status: str = "completed",
    code: str = "notify-municipal-doctor",
    system: str = TOPIC,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Communication",
        "id": "comm-1",
        "status": status,
        "subject": {"reference": "Patient/p"},
        "category": [{"coding": [{"system": system, "code": code}]}],
    }
    if sent:
        resource["sent"] = sent
    return resource


@pytest.mark.parametrize(
    ("resource", "now", "recorded"),
    [
        (communication(), NOW, True),
        # The window is 42 days (content): 41 days ago counts, 43 days ago does not.
        (communication("2026-10-15T10:00:00Z"), NOW, True),
        (communication("2026-10-13T10:00:00Z"), NOW, False),
        (communication(None), NOW, False),  # undated: it cannot be placed in this episode
        (communication(None), None, True),  # no clock, no window
        (communication(status="in-progress"), NOW, False),
        (communication(code="isolation-inpatient"), NOW, False),
        (communication(system="http://example.org/local"), NOW, False),
    ],
)
def test_notification_recorded(
    knowledge: Any, resource: dict[str, Any], now: dt.datetime | None, recorded: bool
) -> None:
    facts = derive_facts(knowledge, Sources(notifications=[resource], now=now))
    assert facts.notification_recorded is recorded


def test_the_suggested_record_is_recognised_when_read_back(knowledge: Any) -> None:
    from cds_hooks.cards import notification_record

    context = RenderContext("p", "e1", user_id="Practitioner/123", now=NOW)
    record = notification_record(knowledge, context, ["Condition/c1"], "nb")
    assert record["sent"] == "2026-11-25T10:00:00Z"
    assert record["sender"] == {"reference": "Practitioner/123"}
    facts = derive_facts(knowledge, Sources(notifications=[record], now=NOW))
    assert facts.notification_recorded is True


@pytest.mark.parametrize(
    "user_id", [None, "123", "Practitioner/", "Device/1", "Practitioner/a/b", "Practitioner/ x"]
)
def test_sender_only_from_a_valid_user_reference(knowledge: Any, user_id: str | None) -> None:
    from cds_hooks.cards import notification_record

    context = RenderContext("p", user_id=user_id)
    record = notification_record(knowledge, context, [], "nb")
    assert "sender" not in record
    assert "sent" not in record  # no clock given


# --- order-select: what was just selected ---------------------------------------------------------


def test_selected_orders_decide_the_procedure_and_the_test(knowledge: Any) -> None:
    drafts = [order("10847001"), order("100383-9", LOINC)]
    bronchoscopy, test = "ServiceRequest/sr-10847001", "ServiceRequest/sr-100383-9"
    only_test = derive_facts(knowledge, Sources(orders=drafts, selected=frozenset({test})))
    assert only_test.aerosol_procedure_ordered is False
    assert only_test.mkopper_test_ordered is True
    only_bronchoscopy = derive_facts(
        knowledge, Sources(orders=drafts, selected=frozenset({bronchoscopy}))
    )
    assert only_bronchoscopy.aerosol_procedure_ordered is True
    assert only_bronchoscopy.mkopper_test_ordered is False
    # The test in the draft still means the clinician suspects m-kopper.
    assert only_bronchoscopy.status is Status.SUSPECTED
    nothing = derive_facts(knowledge, Sources(orders=drafts, selected=frozenset()))
    assert (nothing.aerosol_procedure_ordered, nothing.mkopper_test_ordered) == (False, False)
    everything = derive_facts(knowledge, Sources(orders=drafts))
    assert (everything.aerosol_procedure_ordered, everything.mkopper_test_ordered) == (True, True)
