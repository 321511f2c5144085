"""The synthetic patients: valid R4, loadable twice, synthetic beyond doubt, and up to date."""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cds_hooks.fhir import parse_resource
from cds_hooks.knowledge import default_content_path, load_content, load_valuesets
from plugin.cli.seed import as_of, load_patients
from tests.support import fhirserver, paths
from tests.support.clock import START, Clock
from tests.support.fhirserver import FhirTestServer

ROOT = paths.ROOT
PATIENTS = ROOT / "fhir_profiles" / "patients"
FNR_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.1"

fhir_server = fhirserver.fhir_server  # pytest fixtures, used by name
fhir_store = fhirserver.fhir_store

# Systems whose codes are clinical: every code from them must be in one of our ValueSets,
# which hold only codes the project verified.
CLINICAL_SYSTEMS = {
    "http://snomed.info/sct",
    "http://loinc.org",
    "http://hl7.org/fhir/sid/icd-10",
    "http://hl7.org/fhir/sid/icd-10-no",
    "http://hl7.org/fhir/sid/icd-10-cm",
    "urn:oid:2.16.578.1.12.4.1.1.7110",
}
# FHIR's own structural code systems, and the care-setting systems the ValueSets list.
STRUCTURAL_SYSTEMS = {
    "http://terminology.hl7.org/CodeSystem/condition-clinical",
    "http://terminology.hl7.org/CodeSystem/condition-ver-status",
    "http://terminology.hl7.org/CodeSystem/condition-category",
    "http://terminology.hl7.org/CodeSystem/observation-category",
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
    "http://terminology.hl7.org/CodeSystem/v3-ActCode",
    "urn:oid:2.16.578.1.12.4.1.1.8406",
}


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "generate_patients", ROOT / "tools" / "generate_patients.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def index() -> dict[str, Any]:
    return json.loads((PATIENTS / "index.json").read_text(encoding="utf-8"))


def bundle_files() -> list[Path]:
    return sorted(PATIENTS.glob("mk-*.json"))


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in bundle["entry"]]


def codings(value: Any) -> list[dict[str, Any]]:
    """Every Coding anywhere in a resource (a dict with system and code)."""
    found = []
    if isinstance(value, dict):
        if "system" in value and "code" in value:
            found.append(value)
        for item in value.values():
            found += codings(item)
    elif isinstance(value, list):
        for item in value:
            found += codings(item)
    return found


def references(value: Any) -> list[str]:
    found = []
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            found.append(value["reference"])
        for item in value.values():
            found += references(item)
    elif isinstance(value, list):
        for item in value:
            found += references(item)
    return found


def fnr_check_digits_valid(number: str) -> bool:
    """The two mod-11 check digits of a Norwegian fødselsnummer (independent of the generator)."""
    digits = [int(d) for d in number]
    w1 = [3, 7, 6, 1, 8, 9, 4, 5, 2]
    w2 = [5, 4, 3, 2, 7, 6, 5, 4, 3, 2]
    k1 = (11 - sum(d * w for d, w in zip(digits[:9], w1)) % 11) % 11
    k2 = (11 - sum(d * w for d, w in zip(digits[:10], w2)) % 11) % 11
    return k1 != 10 and k2 != 10 and k1 == digits[9] and k2 == digits[10]


def test_the_committed_files_are_what_the_generator_writes() -> None:
    generated = load_generator().files()
    on_disk = {p.name for p in PATIENTS.glob("*.json")}
    assert on_disk == set(generated), "run: python tools/generate_patients.py"
    for name, text in generated.items():
        assert (PATIENTS / name).read_text(encoding="utf-8") == text, (
            f"{name} is stale: run python tools/generate_patients.py"
        )


def test_the_index_lists_every_bundle_once() -> None:
    listed = [entry["file"] for entry in index()["patients"]]
    assert sorted(listed) == [p.name for p in bundle_files()]
    assert len(set(listed)) == len(listed)
    for entry in index()["patients"]:
        assert entry["file"] == f"{entry['id']}.json"
        assert entry["description"].strip()
        assert entry["expected"]["status"] in {"none", "suspected", "confirmed"}
        encounter = read(PATIENTS / entry["file"])["entry"]
        assert {
            "resourceType": "Encounter",
            "id": entry["encounterId"],
            "status": "in-progress",
        }.items() <= next(
            e["resource"] for e in encounter if e["resource"]["id"] == entry["encounterId"]
        ).items()


def test_expected_cards_are_findings_of_the_content() -> None:
    findings = set(load_content(default_content_path()).findings)
    for entry in index()["patients"]:
        unknown = set(entry["expectedCards"]) - findings
        assert not unknown, f"{entry['id']}: no finding named {sorted(unknown)}"


@pytest.mark.parametrize("path", bundle_files(), ids=lambda p: p.stem)
def test_each_bundle_is_a_valid_r4_transaction(path: Path) -> None:
    bundle = read(path)
    parse_resource(bundle)
    assert bundle["type"] == "transaction"
    for resource in resources(bundle):
        parse_resource(resource)


@pytest.mark.parametrize("path", bundle_files(), ids=lambda p: p.stem)
def test_every_entry_is_a_put_to_its_fixed_id(path: Path) -> None:
    for entry in read(path)["entry"]:
        resource = entry["resource"]
        assert re.fullmatch(r"mk-[a-z0-9-]+", resource["id"]), resource["id"]
        assert entry["request"] == {
            "method": "PUT",
            "url": f"{resource['resourceType']}/{resource['id']}",
        }


def test_ids_are_unique_across_all_patients() -> None:
    keys = Counter(
        f"{r['resourceType']}/{r['id']}" for path in bundle_files() for r in resources(read(path))
    )
    assert [key for key, count in keys.items() if count > 1] == []


@pytest.mark.parametrize("path", bundle_files(), ids=lambda p: p.stem)
def test_references_stay_inside_the_bundle(path: Path) -> None:
    bundle = read(path)
    present = {f"{r['resourceType']}/{r['id']}" for r in resources(bundle)}
    dangling = {ref for r in resources(bundle) for ref in references(r)} - present
    assert dangling == set()


@pytest.mark.parametrize("path", bundle_files(), ids=lambda p: p.stem)
def test_each_bundle_holds_one_patient_named_as_the_file(path: Path) -> None:
    patients = [r for r in resources(read(path)) if r["resourceType"] == "Patient"]
    assert [p["id"] for p in patients] == [path.stem]


@pytest.mark.parametrize("path", bundle_files(), ids=lambda p: p.stem)
def test_identifiers_cannot_belong_to_a_real_person(path: Path) -> None:
    (patient,) = [r for r in resources(read(path)) if r["resourceType"] == "Patient"]
    (identifier,) = patient["identifier"]
    number = identifier["value"]
    assert identifier["system"] == FNR_SYSTEM
    assert re.fullmatch(r"\d{11}", number)
    year, month, day = patient["birthDate"].split("-")
    assert number[:6] == f"{day}{month}{year[2:]}"
    assert not fnr_check_digits_valid(number), f"{number} passes mod-11: could be real"


def test_the_check_digit_rule_accepts_a_correct_number() -> None:
    # Check digits worked by hand for 010190 124: k1 = 11 - 102 % 11 = 8; k2 = 11 - 110 % 11
    # = 11, written 0. (010190 123 has no valid number: its k1 would be 10.)
    assert fnr_check_digits_valid("01019012480")
    assert not fnr_check_digits_valid("01019012481")
    assert not fnr_check_digits_valid("01019012300")


def test_clinical_codes_come_only_from_the_package_valuesets() -> None:
    valuesets = load_valuesets(ROOT / "fhir_profiles" / "valuesets")
    known = {pair for vs in valuesets.values() for pair in vs.codes}
    for path in bundle_files():
        for coding in codings(resources(read(path))):
            system, code = coding["system"], coding["code"]
            if system in CLINICAL_SYSTEMS:
                assert (system, code) in known, f"{path.name}: {system}|{code} is not verified"
            elif system != "http://unitsofmeasure.org":
                assert system in STRUCTURAL_SYSTEMS, f"{path.name}: unexpected system {system}"


def test_encounter_class_is_from_v3_actcode() -> None:
    for path in bundle_files():
        for resource in resources(read(path)):
            if resource["resourceType"] == "Encounter":
                assert resource["class"]["system"] == (
                    "http://terminology.hl7.org/CodeSystem/v3-ActCode"
                )


def test_the_large_record_has_the_size_asked_for() -> None:
    counts = Counter(r["resourceType"] for r in resources(read(PATIENTS / "mk-large-record.json")))
    assert counts == {"Patient": 1, "Condition": 1000, "Encounter": 500, "Observation": 200}


def test_the_generator_never_makes_a_valid_number() -> None:
    generator = load_generator()
    for individual in range(0, 1000, 37):
        number = generator.synthetic_fnr("1988-04-12", individual)
        assert not fnr_check_digits_valid(number)


# --- what the service reads from them ---------------------------------------------------------
# As the seed command loads them: dated relative to the day of loading (the test clock's).


def loaded(patient_id: str) -> dict[str, Any]:
    """The patient's Bundle as ``mkopper-cds seed`` would load it on the test clock's day."""
    (patient,) = load_patients([patient_id])
    return dict(as_of(patient, START.date()).bundle)


def chart_request(patient_id: str, bundle: dict[str, Any]) -> dict[str, Any]:
    """A patient-view request with the chart prefetched from the Bundle, as an EHR would send."""
    found = resources(bundle)

    def searchset(resource_type: str) -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r} for r in found if r["resourceType"] == resource_type],
        }

    (current,) = [
        r for r in found if r["resourceType"] == "Encounter" and r["status"] == "in-progress"
    ]
    return {
        "hookInstance": "0f5e4a52-6a43-4b0e-9a55-1d6f3a2b9c11",
        "hook": "patient-view",
        "context": {
            "userId": "Practitioner/tester",
            "patientId": patient_id,
            "encounterId": current["id"],
        },
        "prefetch": {
            "conditions": searchset("Condition"),
            "observations": searchset("Observation"),
            "encounter": current,
            "aerosolOrders": searchset("ServiceRequest"),
        },
    }


@pytest.fixture(scope="module")
def knowledge() -> Any:
    from cds_hooks.knowledge import load_knowledge

    return load_knowledge()


@pytest.mark.parametrize("entry", index()["patients"], ids=lambda e: e["id"])
def test_the_service_reads_the_expected_facts(knowledge: Any, entry: dict[str, Any]) -> None:
    from cds_hooks.facts import Sources, derive_facts

    found = resources(loaded(entry["id"]))
    (current,) = [
        r for r in found if r["resourceType"] == "Encounter" and r["status"] == "in-progress"
    ]
    facts = derive_facts(
        knowledge,
        Sources(
            conditions=[r for r in found if r["resourceType"] == "Condition"],
            observations=[r for r in found if r["resourceType"] == "Observation"],
            encounters=[current],
            encounter_id=current["id"],
            orders=[r for r in found if r["resourceType"] == "ServiceRequest"],
            now=START,
        ),
    )
    expected = entry["expected"]
    assert facts.status.label == expected["status"]
    assert facts.care_setting.value == expected["careSetting"]
    assert bool(facts.aerosol_procedure_ordered) == bool(expected.get("aerosolProcedures"))
    assert facts.skipped == 0


@pytest.mark.parametrize("entry", index()["patients"], ids=lambda e: e["id"])
def test_patient_view_gives_the_expected_cards(knowledge: Any, entry: dict[str, Any]) -> None:
    from cds_hooks.catalog import build_registry
    from cds_hooks.models import HookRequest
    from cds_hooks.prefetch import resolve

    service = build_registry(knowledge, clock=Clock()).get("mkopper-patient-view")
    request = HookRequest.model_validate(chart_request(entry["id"], loaded(entry["id"])))
    service.check_request(request)
    evaluation = service.evaluate(request, resolve(service, request))
    assert sorted(item.finding for item in evaluation.issued) == sorted(entry["expectedCards"])


def test_the_laboratory_case_needs_the_samples_dated_as_of_loading(knowledge: Any) -> None:
    # The positive PCR as written in the file is older than the lookback window on the test
    # clock: loaded undated, the patient confirmed by the laboratory alone would show nothing.
    from cds_hooks.facts import Sources, derive_facts

    def status(bundle: dict[str, Any]) -> str:
        found = resources(bundle)
        observations = [r for r in found if r["resourceType"] == "Observation"]
        return derive_facts(knowledge, Sources(observations=observations, now=START)).status.label

    assert status(read(PATIENTS / "mk-confirmed-lab-only.json")) == "none"
    assert status(loaded("mk-confirmed-lab-only")) == "confirmed"


# --- loading into a FHIR server ---------------------------------------------------------------


def _without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in resource.items() if key not in ("meta", "text")}


@pytest.mark.fhir_server
def test_loading_every_bundle_twice_changes_nothing(fhir_store: FhirTestServer) -> None:
    stored: dict[str, dict[str, Any]] = {}
    for round_ in (1, 2):
        for path in bundle_files():
            status, body = fhir_store.request("POST", "/", read(path))
            assert status == 200, f"{path.name}: {json.dumps(body)[:500]}"
            assert body["type"] == "transaction-response"
        for path in bundle_files():
            for resource in resources(read(path)):
                key = f"{resource['resourceType']}/{resource['id']}"
                status, body = fhir_store.request("GET", f"/{key}")
                assert status == 200, key
                if round_ == 1:
                    stored[key] = _without_meta(body)
                else:
                    assert _without_meta(body) == stored[key], key
    status, body = fhir_store.request("GET", "/Patient?_summary=count")
    assert status == 200
    assert body["total"] == len(bundle_files())
