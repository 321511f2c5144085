"""fhir_profiles/ as a FHIR package: it loads, it is in step with the content, and real data
(synthetic patients, golden cases, the service's own suggestions) validates against it with
Medplum's validator (tests/fhir_server/validate.mjs)."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cds_hooks.catalog import build_registry
from cds_hooks.fhir import parse_resource
from cds_hooks.knowledge import default_content_path, load_content, load_knowledge
from cds_hooks.models import CdsResponse, HookRequest
from cds_hooks.prefetch import resolve, resources_of
from plugin.cli import contract_doc as contract
from tests.support import paths
from tests.support.golden import iter_cases

ROOT = paths.ROOT
PACKAGE = ROOT / "fhir_profiles"
VALIDATOR_DIR = ROOT / "tests" / "fhir_server"
VALIDATOR = VALIDATOR_DIR / "validate.mjs"
BASE = "https://mkopper-cds.example/fhir"
SD = f"{BASE}/StructureDefinition/"
NOT_RESOURCES = {"package.json", ".index.json", "index.json"}


def read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def package_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.json") if p.name not in NOT_RESOURCES)


def profiles() -> list[dict[str, Any]]:
    return [read(p) for p in sorted(PACKAGE.glob("StructureDefinition-*.json"))]


def load_build_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_package", ROOT / "tools" / "build_package.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the package loads ------------------------------------------------------------------------


@pytest.mark.parametrize("path", package_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_file_parses_as_its_resource_type(path: Path) -> None:
    data = read(path)
    model = parse_resource(data)
    assert model.get_resource_type() == data["resourceType"]


def test_package_manifest_is_a_fhir_npm_package() -> None:
    manifest = read(PACKAGE / "package.json")
    content = load_content(default_content_path())
    changed = content.guideline.last_changed
    assert manifest["name"] == "example.mkopper-cds"
    assert manifest["version"] == f"{changed.year}.{changed.month}.{changed.day}"
    assert manifest["fhirVersions"] == ["4.0.1"]
    assert manifest["dependencies"] == {"hl7.fhir.r4.core": "4.0.1"}
    assert manifest["canonical"] == content.terminology.canonical_base == BASE


def test_the_file_index_lists_every_conformance_resource() -> None:
    listed = {entry["filename"] for entry in read(PACKAGE / ".index.json")["files"]}
    expected = {
        str(p.relative_to(PACKAGE))
        for p in package_files()
        if read(p)["resourceType"] in {"StructureDefinition", "ValueSet", "CodeSystem"}
    }
    assert listed == expected
    for entry in read(PACKAGE / ".index.json")["files"]:
        resource = read(PACKAGE / entry["filename"])
        assert (entry["resourceType"], entry["url"]) == (resource["resourceType"], resource["url"])


def test_generated_package_files_are_current() -> None:
    for path, text in load_build_tool().expected_files().items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} is stale: run python tools/build_package.py"
        )


@pytest.mark.parametrize("profile", profiles(), ids=lambda p: p["id"])
def test_profiles_are_r4_differentials_under_our_base(profile: dict[str, Any]) -> None:
    manifest = read(PACKAGE / "package.json")
    assert profile["url"] == SD + profile["id"]
    assert profile["status"] == "draft"
    assert profile["version"] == manifest["version"]
    assert profile["fhirVersion"] == "4.0.1"
    assert profile["derivation"] == "constraint"
    assert profile["baseDefinition"] == f"http://hl7.org/fhir/StructureDefinition/{profile['type']}"
    assert "snapshot" not in profile
    elements = profile["differential"]["element"]
    assert elements[0]["path"] == profile["type"]
    for element in elements:
        assert element["id"] == element["path"]
        assert element["path"].split(".")[0] == profile["type"]


@pytest.mark.parametrize("profile", profiles(), ids=lambda p: p["id"])
def test_profile_bindings_name_package_valuesets(profile: dict[str, Any]) -> None:
    valuesets = {read(p)["url"] for p in (PACKAGE / "valuesets").glob("ValueSet-*.json")}
    for element in profile["differential"]["element"]:
        binding = element.get("binding")
        if binding:
            assert binding["valueSet"] in valuesets, element["id"]


def test_valuesets_carry_the_package_version() -> None:
    version = read(PACKAGE / "package.json")["version"]
    for path in sorted((PACKAGE / "valuesets").glob("ValueSet-*.json")):
        assert read(path)["version"] == version, path.name


def test_the_profiles_cover_what_the_rules_read_and_the_service_writes() -> None:
    types = {p["type"] for p in profiles()}
    assert {"Condition", "Observation", "Encounter", "Communication"} <= types


def test_codesystems_hold_exactly_the_content_codes() -> None:
    content = load_content(default_content_path())
    topics = read(PACKAGE / "CodeSystem-card-topic.json")
    reasons = read(PACKAGE / "CodeSystem-override-reason.json")
    assert [c["code"] for c in topics["concept"]] == list(content.findings)
    assert [c["code"] for c in reasons["concept"]] == list(content.override_reasons)
    for concept in reasons["concept"]:
        assert concept["display"] == content.override_reasons[concept["code"]].display.nb


def test_cards_name_our_codesystems() -> None:
    knowledge = load_knowledge()
    topics = read(PACKAGE / "CodeSystem-card-topic.json")["url"]
    reasons = read(PACKAGE / "CodeSystem-override-reason.json")["url"]
    cards = [card for _, card in suggestion_cards(knowledge)]
    assert cards
    for card in cards:
        assert card["source"]["topic"]["system"] == topics
        for reason in card.get("overrideReasons", []):
            assert reason["system"] == reasons


# --- the contract page ------------------------------------------------------------------------


def test_contract_page_is_current() -> None:
    page = ROOT / "docs" / "data-contract.md"
    assert page.read_text(encoding="utf-8") == contract.render(), (
        "docs/data-contract.md is stale: run mkopper-cds contract-doc"
    )


def test_contract_page_shows_each_profile_with_an_example() -> None:
    page = contract.render()
    package = contract.load_package()
    for profile in package.profiles:
        assert profile["url"] in page
        example = contract.example_of(profile, package)
        assert example is not None, profile["id"]
        assert json.dumps(example[1], ensure_ascii=False, indent=2) in page


def test_contract_doc_command_checks_staleness(tmp_path: Path) -> None:
    from plugin.cli.main import build_parser

    target = tmp_path / "contract.md"
    parser = build_parser()
    check = parser.parse_args(["contract-doc", "--output", str(target), "--check"])
    assert check.func(check) == 1
    write = parser.parse_args(["contract-doc", "--output", str(target)])
    assert write.func(write) == 0
    assert target.read_text(encoding="utf-8") == contract.render()
    assert check.func(check) == 0


def test_profile_applies_only_to_coded_mkopper_conditions() -> None:
    package = contract.load_package()
    (condition_profile,) = [p for p in package.profiles if p["type"] == "Condition"]
    coded = {
        "resourceType": "Condition",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "359814004"}]},
    }
    text_only = {"resourceType": "Condition", "code": {"text": "Mistenkt apekopper"}}
    encounter = {"resourceType": "Encounter"}
    assert contract.profile_applies(condition_profile, coded, package.valuesets)
    assert not contract.profile_applies(condition_profile, text_only, package.valuesets)
    assert not contract.profile_applies(condition_profile, encounter, package.valuesets)


# --- validation with Medplum's validator ------------------------------------------------------


def require_validator() -> str:
    """The node binary; skip when the validator cannot run, but fail in CI (CI=true)."""
    node = shutil.which("node")
    problem = None
    if node is None:
        problem = "node is not installed"
    elif not (VALIDATOR_DIR / "node_modules" / "@medplum" / "core").is_dir():
        problem = "tests/fhir_server/node_modules is missing (run npm ci there)"
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"FHIR validator unavailable in CI: {problem}")
        pytest.skip(problem)
    assert node
    return node


def validate_files(
    tmp_path: Path, documents: dict[str, list[dict[str, Any]]], *args: str
) -> tuple[int, list[dict[str, Any]]]:
    """Run validate.mjs once over named groups of resources; exit code and issues.

    Each group is written as one collection Bundle named after it, so an issue's ``source``
    says which group it came from.
    """
    node = require_validator()
    paths = []
    for name, resources in documents.items():
        path = tmp_path / f"{name.replace('/', '__')}.json"
        bundle = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": r} for r in resources],
        }
        path.write_text(json.dumps(bundle), encoding="utf-8")
        paths.append(str(path))
    result = subprocess.run(
        [node, "--experimental-websocket", str(VALIDATOR), "--json", *args, *paths],
        cwd=VALIDATOR_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode in (0, 1), result.stderr
    issues = json.loads(result.stdout)
    for issue in issues:
        issue["source"] = Path(issue["source"]).stem.replace("__", "/")
    return result.returncode, issues


def validate(
    tmp_path: Path, resources: Iterable[dict[str, Any]], *args: str
) -> tuple[int, list[dict[str, Any]]]:
    return validate_files(tmp_path, {"input": list(resources)}, *args)


def errors(issues: list[dict[str, Any]]) -> list[str]:
    return [
        f"{i['resource']} [{i['profile']}] {i['path']}: {i['message']}"
        for i in issues
        if i["severity"] in ("error", "fatal")
    ]


def claim_profiles(found: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of the resources, each naming in meta.profile every package profile that applies."""
    package = contract.load_package()
    claimed = []
    for resource in found:
        urls = [
            p["url"]
            for p in package.profiles
            if contract.profile_applies(p, resource, package.valuesets)
        ]
        copied = copy.deepcopy(resource)
        if urls:
            copied.setdefault("meta", {})["profile"] = urls
        claimed.append(copied)
    return claimed


def patient_resources() -> list[dict[str, Any]]:
    found = []
    for path in sorted((PACKAGE / "patients").glob("mk-*.json")):
        found += [entry["resource"] for entry in read(path)["entry"]]
    return found


def case_resources() -> dict[str, list[dict[str, Any]]]:
    """The FHIR resources of each golden case's request (prefetch and context), by case id."""
    found: dict[str, list[dict[str, Any]]] = {}
    for case in iter_cases():
        values = [*(case.request.get("prefetch") or {}).values(), *case.request["context"].values()]
        for value in values:
            if isinstance(value, dict):
                for resource in resources_of(value) or []:
                    # R5-shaped Encounter.class (a list) is a deliberate case: the service reads
                    # it, but it is not R4 and no R4 validator can accept it.
                    if resource.get("resourceType") == "Encounter" and isinstance(
                        resource.get("class"), list
                    ):
                        continue
                    found.setdefault(case.id, []).append(resource)
    return found


# Golden cases whose data breaks an R4 rule, with the rule the validator names. A case
# leaves this list when its data is fixed (the test then says so).
KNOWN_INVALID_CASES: dict[str, str] = {}


def suggestion_cards(knowledge: Any) -> list[tuple[str, dict[str, Any]]]:
    registry = build_registry(knowledge)
    cards = []
    for case in iter_cases():
        service = registry.get(case.service_id)
        request = HookRequest.model_validate(case.request)
        evaluation = service.evaluate(request, resolve(service, request))
        cards += [(case.id, card) for card in CdsResponse(cards=evaluation.cards).wire()["cards"]]
    return cards


def suggestion_resources() -> list[dict[str, Any]]:
    found = []
    for _, card in suggestion_cards(load_knowledge()):
        for suggestion in card.get("suggestions") or []:
            found += [a["resource"] for a in suggestion.get("actions") or [] if "resource" in a]
    return found


@pytest.mark.fhir_server
def test_synthetic_patients_validate_against_the_profiles(tmp_path: Path) -> None:
    claimed = claim_profiles(patient_resources())
    assert sum("meta" in r for r in claimed) > 500  # the profiles do apply, not only the base
    code, issues = validate(tmp_path, claimed)
    assert errors(issues) == []
    assert code == 0


@pytest.mark.fhir_server
def test_patient_bundles_validate_as_transactions(tmp_path: Path) -> None:
    node = require_validator()
    files = [str(p) for p in sorted((PACKAGE / "patients").glob("mk-*.json"))]
    result = subprocess.run(
        [node, "--experimental-websocket", str(VALIDATOR), "--json", *files],
        cwd=VALIDATOR_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert errors(json.loads(result.stdout)) == []
    assert result.returncode == 0


@pytest.mark.fhir_server
def test_golden_case_resources_validate_against_the_profiles(tmp_path: Path) -> None:
    found = case_resources()
    assert found, "no golden case carries FHIR resources"
    code, issues = validate_files(
        tmp_path, {case: claim_profiles(resources) for case, resources in found.items()}
    )
    by_case: dict[str, list[str]] = {}
    for issue in issues:
        if issue["severity"] in ("error", "fatal"):
            by_case.setdefault(issue["source"], []).append(errors([issue])[0])
    unexpected = {case: e for case, e in by_case.items() if case not in KNOWN_INVALID_CASES}
    assert unexpected == {}
    for case, rule in KNOWN_INVALID_CASES.items():
        assert any(rule in line for line in by_case.get(case, [])), (
            f"{case} now validates: remove it from KNOWN_INVALID_CASES"
        )
    assert code == (1 if KNOWN_INVALID_CASES else 0)


@pytest.mark.fhir_server
def test_suggestion_resources_validate_against_the_profile(tmp_path: Path) -> None:
    found = suggestion_resources()
    assert found, "no golden case produces a suggestion"
    code, issues = validate(tmp_path, found, "--profile", SD + "mkopper-notification-communication")
    assert errors(issues) == []
    assert code == 0


def _suspected_condition() -> dict[str, Any]:
    bundle = read(PACKAGE / "patients" / "mk-suspected-outpatient.json")
    (condition,) = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Condition"
    ]
    condition = copy.deepcopy(condition)
    condition["meta"] = {"profile": [SD + "mkopper-condition"]}
    return condition


def _broken_examples() -> list[tuple[str, dict[str, Any], str]]:
    """(name, resource, what the validator must say): each breaks one rule of a profile."""
    unverified_code = _suspected_condition()
    # SNOMED 414015000 is listed as "do not use as known": not in the m-kopper ValueSet.
    unverified_code["code"] = {
        "coding": [{"system": "http://snomed.info/sct", "code": "414015000"}]
    }
    no_code = _suspected_condition()
    del no_code["code"]
    encounter = {
        "resourceType": "Encounter",
        "id": "broken-encounter",
        "meta": {"profile": [SD + "mkopper-encounter"]},
        "status": "in-progress",
        "class": {"system": "http://example.org/local-settings", "code": "POLI"},
        "subject": {"reference": "Patient/mk-suspected-outpatient"},
    }
    observation = {
        "resourceType": "Observation",
        "id": "broken-observation",
        "meta": {"profile": [SD + "mkopper-lab-observation"]},
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "100383-9"}]},
        "subject": {"reference": "Patient/mk-suspected-outpatient"},
    }
    communication = {
        "resourceType": "Communication",
        "meta": {"profile": [SD + "mkopper-notification-communication"]},
        "status": "in-progress",
        "subject": {"reference": "Patient/mk-suspected-outpatient"},
        "recipient": [{"display": "Kommunelegen"}],
        "medium": [{"text": "Telefon"}],
        "reasonCode": [{"text": "Mistenkt eller bekreftet m-kopper"}],
        "payload": [{"contentString": "Kommunelegen er varslet."}],
    }
    return [
        (
            "unverified-code",
            unverified_code,
            "Value not in required ValueSet " + BASE + "/ValueSet/mkopper-diagnosis",
        ),
        ("no-code", no_code, "Missing required property"),
        ("encounter-class-system", encounter, "Constraint mke-1 not met"),
        ("observation-without-result", observation, "Constraint mko-1 not met"),
        ("communication-not-completed", communication, "Value did not match expected pattern"),
    ]


BROKEN = _broken_examples()


@pytest.fixture(scope="module")
def broken_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """One validator run over every broken example and the intact Condition they start from."""
    documents = {name: [resource] for name, resource, _ in BROKEN}
    documents["intact"] = [_suspected_condition()]
    _, issues = validate_files(tmp_path_factory.mktemp("broken"), documents)
    report: dict[str, list[str]] = {name: [] for name in documents}
    for issue in issues:
        if issue["severity"] in ("error", "fatal"):
            report[issue["source"]].append(errors([issue])[0])
    return report


@pytest.mark.fhir_server
def test_the_intact_example_passes(broken_report: dict[str, list[str]]) -> None:
    # The broken Conditions start from this one: their failures are the breaks, nothing else.
    assert broken_report["intact"] == []


@pytest.mark.fhir_server
@pytest.mark.parametrize(
    ("name", "message"), [(b[0], b[2]) for b in BROKEN], ids=[b[0] for b in BROKEN]
)
def test_a_broken_example_fails_with_the_validators_message(
    broken_report: dict[str, list[str]], name: str, message: str
) -> None:
    found = broken_report[name]
    assert any(message in line for line in found), found


@pytest.mark.fhir_server
def test_a_broken_example_makes_the_validator_exit_non_zero(tmp_path: Path) -> None:
    _, resource, _ = BROKEN[0]
    code, _issues = validate(tmp_path, [resource])
    assert code == 1


@pytest.mark.fhir_server
def test_an_unknown_profile_is_an_error(tmp_path: Path) -> None:
    resource = _suspected_condition()
    resource["meta"]["profile"] = [SD + "no-such-profile"]
    code, issues = validate(tmp_path, [resource])
    assert code == 1
    assert any("Unknown profile" in line for line in errors(issues))


@pytest.mark.fhir_server
def test_the_validator_reads_stdin_and_refuses_bad_input(tmp_path: Path) -> None:
    node = require_validator()
    run = [node, "--experimental-websocket", str(VALIDATOR)]
    good = subprocess.run(
        run,
        input=json.dumps(_suspected_condition()),
        cwd=VALIDATOR_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (good.returncode, good.stdout) == (0, "")
    bad = subprocess.run(
        [*run, str(tmp_path / "missing.json")],
        cwd=VALIDATOR_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "cannot read" in bad.stderr
