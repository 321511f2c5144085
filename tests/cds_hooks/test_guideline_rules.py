"""Rules (facts -> findings), cards (findings -> CDS Hooks cards) and the service catalog."""

from __future__ import annotations

import re
from typing import Any

import pytest

from cds_hooks import rules
from cds_hooks.cards import RenderContext, render_cards
from cds_hooks.catalog import SERVICE_IDS, build_registry
from cds_hooks.errors import ContentError, DataUnavailable, InvalidRequest
from cds_hooks.facts import CareSetting, Facts, Status
from cds_hooks.fhir import parse_resource
from cds_hooks.knowledge import load_knowledge
from cds_hooks.models import HookRequest
from cds_hooks.prefetch import resolve
from cds_hooks.rules import Finding, evaluate_rules

SUSPECTED = Facts(status=Status.SUSPECTED, status_evidence=("Condition/c1",))


def keys(facts: Facts) -> set[str]:
    return {finding.key for finding in evaluate_rules(facts)}


@pytest.fixture(scope="module")
def knowledge() -> Any:
    return load_knowledge()


# --- Rules ------------------------------------------------------------------------------------


def test_no_mkopper_no_findings() -> None:
    facts = Facts(
        status=Status.NONE,
        care_setting=CareSetting.INPATIENT,
        aerosol_procedure_ordered=True,
        respiratory_symptoms=True,
    )
    assert keys(facts) == set()


@pytest.mark.parametrize(
    ("setting", "regime"),
    [
        (CareSetting.OUTPATIENT, {"droplet-precautions-outpatient", "cleaning-after-consultation"}),
        (CareSetting.EMERGENCY, {"droplet-precautions-outpatient", "cleaning-after-consultation"}),
        (CareSetting.INPATIENT, {"isolation-inpatient"}),
        (CareSetting.UNKNOWN, {"droplet-precautions"}),
        # The ambulance card itself advises the respirator (5.2): no second card for it.
        (CareSetting.FIELD, {"droplet-precautions"}),
        (CareSetting.HOME, {"droplet-precautions"}),
        (CareSetting.VIRTUAL, set()),
    ],
)
def test_regime_follows_the_care_setting(setting: CareSetting, regime: set[str]) -> None:
    facts = Facts(status=Status.SUSPECTED, care_setting=setting)
    always = {
        "infectious-period",
        "plan-outpatient-consultation",
        "notify-municipal-doctor",
        "sampling-by-agreement",  # a suspected case: the moment decides whether it shows
    }
    staff = set() if setting is CareSetting.VIRTUAL else {"staff-in-vulnerable-groups"}
    assert keys(facts) == always | regime | staff


def test_respirator_for_aerosol_or_marked_respiratory_symptoms() -> None:
    base = Facts(status=Status.SUSPECTED, care_setting=CareSetting.INPATIENT)
    assert "respirator" not in keys(base)
    for facts in (
        Facts(
            Status.SUSPECTED, aerosol_procedure_ordered=True, aerosol_procedure_evidence=("SR/1",)
        ),
        Facts(Status.SUSPECTED, respiratory_symptoms=True),
    ):
        assert "respirator" in keys(facts)
    # Unknown is not "no", but it is not "yes" either: no respirator card from unknown data.
    assert "respirator" not in keys(Facts(Status.SUSPECTED, aerosol_procedure_ordered=None))


def test_respirator_evidence_names_the_order() -> None:
    facts = Facts(
        Status.SUSPECTED,
        status_evidence=("Condition/c1",),
        aerosol_procedure_ordered=True,
        aerosol_procedure_evidence=("ServiceRequest/s1",),
    )
    assert rules.respirator_when_aerosol_or_respiratory(facts) == Finding(
        "respirator", ("Condition/c1", "ServiceRequest/s1")
    )


def test_contact_tracing_only_for_confirmed() -> None:
    assert "contact-tracing" not in keys(SUSPECTED)
    assert "contact-tracing" in keys(Facts(status=Status.CONFIRMED))


def test_sampling_when_a_test_is_ordered_or_the_case_is_suspected() -> None:
    confirmed = Facts(Status.CONFIRMED)
    assert "sampling-by-agreement" not in keys(confirmed)
    assert "sampling-by-agreement" in keys(SUSPECTED)
    ordered = Facts(Status.CONFIRMED, mkopper_test_ordered=True, mkopper_test_evidence=("SR/t",))
    assert rules.sampling_by_agreement(ordered) == Finding("sampling-by-agreement", ("SR/t",))


def test_every_rule_gives_a_known_finding() -> None:
    everything = Facts(
        Status.CONFIRMED,
        care_setting=CareSetting.OUTPATIENT,
        aerosol_procedure_ordered=True,
        mkopper_test_ordered=True,
    )
    found = keys(everything) | keys(Facts(Status.CONFIRMED, care_setting=CareSetting.INPATIENT))
    found |= keys(Facts(Status.CONFIRMED))
    assert found == rules.FINDINGS


# --- Cards ------------------------------------------------------------------------------------


def render(knowledge: Any, *finding_keys: str, **options: Any) -> list[Any]:
    findings = [Finding(key, ("Condition/c1",)) for key in finding_keys]
    return render_cards(knowledge, findings, RenderContext("p1", "e1"), **options)


def test_at_most_max_cards_most_urgent_first(knowledge: Any) -> None:
    every = sorted(rules.FINDINGS)
    issued = render(knowledge, *every)
    assert [item.finding for item in issued] == [
        "notify-municipal-doctor",
        "isolation-inpatient",
        "respirator",
    ]
    assert [item.card.indicator for item in issued] == ["critical", "warning", "warning"]
    assert len(render(knowledge, *every, max_cards=5)) == 5
    assert len(render(knowledge, *every, max_cards=20)) == len(every) - 1  # cleaning is merged


def test_related_advice_is_merged_not_repeated(knowledge: Any) -> None:
    issued = render(knowledge, "cleaning-after-consultation", "droplet-precautions-outpatient")
    assert [item.finding for item in issued] == ["droplet-precautions-outpatient"]
    card = issued[0].card
    assert "Rengjøring og desinfeksjon" in card.detail
    assert "punkt 5.1, 5.2." in card.detail
    assert {str(link.url) for link in card.links} == {
        "https://kvalitet.helse-bergen.no/docs/pub/dok00499.htm",
        "https://kvalitet.helse-bergen.no/docs/pub/dok00575.htm",
    }
    alone = render(knowledge, "cleaning-after-consultation")
    assert [item.finding for item in alone] == ["cleaning-after-consultation"]


def test_card_carries_source_topic_version_and_section(knowledge: Any) -> None:
    card = render(knowledge, "isolation-inpatient")[0].card.wire()
    assert card["source"]["label"] == "Helse Bergen: M-kopper (retningslinje)"
    assert card["source"]["topic"] == {
        "system": "https://mkopper-cds.example/fhir/CodeSystem/card-topic",
        "code": "isolation-inpatient",
        "display": "Isolering av inneliggende pasient",
    }
    assert "21.03.25" in card["detail"] and "punkt 5.2" in card["detail"]
    for item in ("Kirurgisk munnbind", "Smittefrakk med lange ermer", "Hansker", "Øyebeskyttelse"):
        assert item in card["detail"]
    assert re.fullmatch(r"[0-9a-f-]{36}", card["uuid"])
    reasons = card["overrideReasons"]
    assert all(r["display"] and r["system"].endswith("/override-reason") for r in reasons)


def test_english_cards(knowledge: Any) -> None:
    card = render(knowledge, "notify-municipal-doctor", language="en")[0].card.wire()
    assert card["summary"].startswith("Notify the municipal medical officer")
    assert card["source"]["label"] == "Helse Bergen: Mpox (guideline)"
    assert "section 8" in card["detail"]


def test_notification_suggestion_is_a_valid_r4_communication(knowledge: Any) -> None:
    card = render(knowledge, "notify-municipal-doctor")[0].card.wire()
    assert card["selectionBehavior"] == "any"
    (suggestion,) = card["suggestions"]
    (action,) = suggestion["actions"]
    assert action["type"] == "create"
    resource = action["resource"]
    parse_resource(resource)
    assert resource["resourceType"] == "Communication"
    assert resource["subject"] == {"reference": "Patient/p1"}
    assert resource["encounter"] == {"reference": "Encounter/e1"}
    assert resource["about"] == [{"reference": "Condition/c1"}]
    assert resource["recipient"] == [{"display": "Kommunelegen"}]


def test_uuids_fresh_per_call(knowledge: Any) -> None:
    first = render(knowledge, "notify-municipal-doctor")[0].card
    second = render(knowledge, "notify-municipal-doctor")[0].card
    assert first.uuid != second.uuid
    assert first.suggestions and second.suggestions
    assert first.suggestions[0].uuid != second.suggestions[0].uuid


# --- Catalog ----------------------------------------------------------------------------------

HOOK_OF = {
    "mkopper-patient-view": "patient-view",
    "mkopper-encounter-start": "encounter-start",
    "mkopper-appointment-book": "appointment-book",
    "mkopper-order-select": "order-select",
    "mkopper-order-sign": "order-sign",
    "mkopper-encounter-discharge": "encounter-discharge",
    "mkopper-problem-list-item-create": "problem-list-item-create",
}


def test_seven_services_one_per_hook(knowledge: Any) -> None:
    registry = build_registry(knowledge)
    assert {service.id: service.hook for service in registry} == HOOK_OF
    assert set(SERVICE_IDS) == set(HOOK_OF)
    for service in registry:
        descriptor = service.descriptor().wire()
        assert descriptor["title"] and descriptor["description"]
        for template in descriptor.get("prefetch", {}).values():
            tokens = set(re.findall(r"\{\{([^}]+)\}\}", template))
            assert tokens <= {"context.patientId", "context.encounterId"}, template


def test_prefetch_templates_name_valueset_codes(knowledge: Any) -> None:
    service = build_registry(knowledge).get("mkopper-patient-view")
    observations = service.prefetch["observations"]
    for _, code in sorted(knowledge.valueset("mkopper-laboratory-tests").codes):
        assert f"http://loinc.org|{code}" in observations
    # Conditions are not filtered by code: text-only records must be found too.
    assert "code=" not in service.prefetch["conditions"]
    assert service.required_prefetch == {"conditions", "observations"}


def test_build_registry_refuses_bad_options(knowledge: Any) -> None:
    with pytest.raises(ValueError, match="language"):
        build_registry(knowledge, language="de")
    with pytest.raises(ValueError, match="max_cards"):
        build_registry(knowledge, max_cards=0)


def _request(hook: str, context: dict[str, Any], prefetch: dict[str, Any] | None) -> HookRequest:
    return HookRequest.model_validate(
        {
            "hook": hook,
            "hookInstance": "a0b1c2",
            "context": {"patientId": "p1", "userId": "Practitioner/u", **context},
            "prefetch": prefetch,
        }
    )


def test_missing_required_prefetch_is_412(knowledge: Any) -> None:
    service = build_registry(knowledge).get("mkopper-encounter-discharge")
    request = _request("encounter-discharge", {"encounterId": "e1"}, {"observations": None})
    with pytest.raises(DataUnavailable):
        service.evaluate(request, resolve(service, request))


def test_draft_orders_that_are_not_a_bundle_are_refused(knowledge: Any) -> None:
    service = build_registry(knowledge).get("mkopper-order-sign")
    request = _request(
        "order-sign",
        {"draftOrders": ["not", "a", "bundle"]},
        {"conditions": None, "observations": None},
    )
    with pytest.raises(InvalidRequest) as caught:
        service.evaluate(request, resolve(service, request))
    assert caught.value.details == [
        {"path": "context.draftOrders", "problem": "must be a FHIR Bundle"}
    ]


def test_patient_without_mkopper_gets_no_cards_and_no_status(knowledge: Any) -> None:
    service = build_registry(knowledge).get("mkopper-patient-view")
    request = _request("patient-view", {}, {"conditions": None, "observations": None})
    evaluation = service.evaluate(request, resolve(service, request))
    assert evaluation.issued == [] and evaluation.status is None


def test_evaluation_reports_the_status(knowledge: Any) -> None:
    service = build_registry(knowledge).get("mkopper-encounter-discharge")
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "code": {"text": "M-kopper"},
        "verificationStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "code": "confirmed",
                }
            ]
        },
    }
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": condition}]}
    request = _request(
        "encounter-discharge", {"encounterId": "e1"}, {"conditions": bundle, "observations": None}
    )
    evaluation = service.evaluate(request, resolve(service, request))
    assert evaluation.status == "confirmed"
    assert [item.finding for item in evaluation.issued] == ["contact-tracing", "infectious-period"]


def test_max_cards_setting_reaches_the_services(knowledge: Any) -> None:
    service = build_registry(knowledge, max_cards=1).get("mkopper-encounter-discharge")
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "code": {"text": "mpox"},
        "verificationStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "code": "confirmed",
                }
            ]
        },
    }
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": condition}]}
    request = _request(
        "encounter-discharge", {"encounterId": "e1"}, {"conditions": bundle, "observations": None}
    )
    evaluation = service.evaluate(request, resolve(service, request))
    assert [item.finding for item in evaluation.issued] == ["contact-tracing"]


# --- The moment and the setting's words -------------------------------------------------------

RESPIRATOR_NB = "Åndedrettsvern anbefales ved aerosoldannende prosedyrer, når pasienten har uttalte"
RESPIRATOR_EN = "A respirator is recommended for aerosol-generating procedures, when the patient"


@pytest.mark.parametrize(
    ("key", "variant"),
    [
        ("isolation-inpatient", None),
        ("droplet-precautions-outpatient", None),
        ("droplet-precautions", None),
        ("droplet-precautions", "field"),
        ("droplet-precautions", "home"),
    ],
)
def test_every_regime_card_states_when_a_respirator_is_recommended(
    knowledge: Any, key: str, variant: str | None
) -> None:
    for language, sentence in (("nb", RESPIRATOR_NB), ("en", RESPIRATOR_EN)):
        (item,) = render_cards(
            knowledge,
            [Finding(key, ("Condition/c1",), variant=variant)],
            RenderContext("p1"),
            language=language,
        )
        assert sentence in " ".join(item.card.detail.split())
        assert "5.2" in item.card.detail


def test_ambulance_card_advises_a_respirator_not_a_surgical_mask(knowledge: Any) -> None:
    facts = Facts(Status.SUSPECTED, care_setting=CareSetting.FIELD)
    (finding,) = [f for f in rules.evaluate_rules(facts) if f.key == "droplet-precautions"]
    assert finding.variant == "field"
    (item,) = render_cards(knowledge, [finding], RenderContext("p1"))
    assert item.card.summary.startswith("Ambulanse: åndedrettsvern")
    assert "- Åndedrettsvern" in item.card.detail
    assert "Kirurgisk munnbind" not in item.card.detail
    assert "respirator" not in keys(facts)  # the setting card says it: no second card


def test_home_visit_card_names_no_clinic_rooms(knowledge: Any) -> None:
    facts = Facts(Status.SUSPECTED, care_setting=CareSetting.HOME)
    assert "cleaning-after-consultation" not in keys(facts)
    assert "droplet-precautions-outpatient" not in keys(facts)
    (finding,) = [f for f in rules.evaluate_rules(facts) if f.key == "droplet-precautions"]
    for language, rooms in (("nb", ("undersøkelsesrom", "venterom")), ("en", ("room",))):
        (item,) = render_cards(knowledge, [finding], RenderContext("p1"), language=language)
        text = f"{item.card.summary} {item.card.detail}".lower()
        assert not any(room in text for room in rooms), language


def test_content_must_give_every_variant_the_rules_use(knowledge: Any) -> None:
    import dataclasses

    content = knowledge.content
    finding = content.findings["droplet-precautions"]
    without = finding.model_copy(update={"variants": {"home": finding.variants["home"]}})
    broken = dataclasses.replace(
        knowledge,
        content=content.model_copy(
            update={"findings": {**content.findings, "droplet-precautions": without}}
        ),
    )
    with pytest.raises(ContentError, match=r"findings\.droplet-precautions\.variants\.field"):
        build_registry(broken)


def test_respirator_for_a_procedure_in_progress_or_recent() -> None:
    facts = Facts(
        Status.SUSPECTED,
        status_evidence=("Condition/c1",),
        aerosol_procedure_performed=True,
        aerosol_procedure_performed_evidence=("Procedure/p1",),
    )
    assert rules.respirator_when_aerosol_or_respiratory(facts) == Finding(
        "respirator", ("Condition/c1", "Procedure/p1")
    )
    assert "respirator" not in keys(Facts(Status.SUSPECTED, aerosol_procedure_performed=False))


def test_no_notification_card_when_the_record_holds_the_notification() -> None:
    assert "notify-municipal-doctor" in keys(Facts(Status.SUSPECTED, notification_recorded=False))
    assert "notify-municipal-doctor" in keys(Facts(Status.SUSPECTED, notification_recorded=None))
    assert "notify-municipal-doctor" not in keys(
        Facts(Status.SUSPECTED, notification_recorded=True)
    )


@pytest.mark.parametrize(
    ("selections", "problem"),
    [
        (None, "required"),
        ("ServiceRequest/sr-1", "must be a list"),
        ([1], "must be a list"),
        (["sr-1"], "must be a list"),
    ],
)
def test_order_select_needs_selections_as_references(
    knowledge: Any, selections: Any, problem: str
) -> None:
    service = build_registry(knowledge).get("mkopper-order-select")
    context: dict[str, Any] = {
        "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": []}
    }
    if selections is not None:
        context["selections"] = selections
    request = _request("order-select", context, {"conditions": None, "observations": None})
    with pytest.raises(InvalidRequest) as caught:
        service.evaluate(request, resolve(service, request))
    (detail,) = caught.value.details
    assert detail["path"] == "context.selections"
    assert detail["problem"].startswith(problem)


def test_order_sign_reads_every_draft_order(knowledge: Any) -> None:
    service = build_registry(knowledge).get("mkopper-order-sign")
    drafts = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": {
                    "resourceType": "ServiceRequest",
                    "id": "sr-1",
                    "status": "draft",
                    "intent": "order",
                    "subject": {"reference": "Patient/p1"},
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "10847001"}]},
                }
            }
        ],
    }
    condition = {
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "code": {"text": "mpox"},
    }
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": condition}]}
    request = _request(
        "order-sign",
        {"draftOrders": drafts, "selections": []},
        {"conditions": bundle, "observations": None},
    )
    evaluation = service.evaluate(request, resolve(service, request))
    assert [item.finding for item in evaluation.issued] == ["respirator"]
