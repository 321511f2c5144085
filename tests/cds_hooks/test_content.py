"""The content file and the ValueSets: limits, coverage, links and codes, and broken files."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from cds_hooks.cards import RenderContext, render_cards
from cds_hooks.catalog import SERVICE_IDS, build_registry, check_content
from cds_hooks.errors import ContentError
from cds_hooks.fhir import parse_resource
from cds_hooks.knowledge import (
    LANGUAGES,
    default_content_path,
    default_valueset_dir,
    load_knowledge,
)
from cds_hooks.rules import FINDINGS, Finding

# Every URL a card may link to, with the document it is and where it was read. The content file
# is checked against this list; the list is not the source of the content.
ALLOWED_URLS: dict[str, str] = {
    # seed section 3 (Smittemåte og smitteførende periode), links under the section
    "https://www.fhi.no/nettpub/smittevernveilederen/sykdommer-a-a/apekopper/": "apekopper",
    # seed 5.1 and 5.2 "Dråpesmitteregime"; section 10 internal reference 1.2.9.3-02
    "https://kvalitet.helse-bergen.no/docs/pub/dok00499.htm": "Dråpesmitteregime",
    # seed 5.1 "Rengjøring og desinfeksjon av flater, inventar og utstyr"; section 10, 1.2.9.2-09
    "https://kvalitet.helse-bergen.no/docs/pub/dok00575.htm": "Rengjøring og desinfeksjon",
    # seed section 10 internal reference 1.2.9.3-09 Luftsmitteregime
    "https://kvalitet.helse-bergen.no/docs/pub/dok00983.htm": "Luftsmitteregime",
    # seed 8 "Varsling om smittsomme sykdommer og utbrudd"; section 10, 1.2.9.8-01
    "https://kvalitet.helse-bergen.no/docs/pub/dok00522.htm": "Varsling om smittsomme sykdommer",
    # seed 6 "se Analyseoversikten.no, Mpox"
    "https://analyseoversikten.no/analyser/1983": "Analyseoversikten.no, Mpox",
    # seed 9 "Råd for oppfølging av nærkontakter hos FHI (Smittevernhåndboka)"
    "https://www.fhi.no/sm/smittevernhandboka/sykdommer-a-a/mpox/"
    "?term=#tiltak-i-helseinstitusjoner": "Smittevernhåndboka",
    # seed section 10 external reference 2.12.7.2 Smittevernveilederen
    "https://www.fhi.no/nettpub/smittevernveilederen/": "Smittevernveilederen",
    # seed section 10 external reference 3.2.9.2.1 Mpox FHI
    "https://www.fhi.no/ss/mpox/": "Mpox",
    # TERMINOLOGY.md, aerosol-generating procedures: FHI's list
    "https://www.fhi.no/sv/forebygging-i-helsetjenesten/smittevern-i-institusjoner/"
    "aerosolgenererende-prosedyrer-i-luftveiene/": "Aerosolgenererende prosedyrer",
    # TERMINOLOGY.md, Norwegian public-health rules: varsling to FHI
    "https://www.fhi.no/sv/melding-og-varsling/varsling/varsling/": "Varsling",
}

# TERMINOLOGY.md "verified" tables: the only codes a ValueSet may hold.
VERIFIED_CODES: set[tuple[str, str]] = {
    ("http://snomed.info/sct", "359814004"),
    ("http://hl7.org/fhir/sid/icd-10", "B04"),
    ("http://hl7.org/fhir/sid/icd-10-no", "B04"),
    ("urn:oid:2.16.578.1.12.4.1.1.7110", "B04"),
    ("http://hl7.org/fhir/sid/icd-10-cm", "B04"),
    *{
        ("http://loinc.org", c)
        for c in ("100383-9", "100888-7", "100889-5", "101003-2", "100434-0")
    },
    *{("http://snomed.info/sct", c) for c in ("260373001", "10828004", "260415000", "260385009")},
    ("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "POS"),
    ("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "NEG"),
    *{
        ("http://snomed.info/sct", c)
        for c in ("112798008", "16883004", "271280005", "10847001", "428311008", "40617009")
    },
    *{("http://snomed.info/sct", c) for c in ("371907003", "426854004")},
    *{("http://snomed.info/sct", c) for c in ("48387007", "89666000", "47545007", "56251003")},
    *{
        ("http://terminology.hl7.org/CodeSystem/v3-ActCode", c)
        for c in (
            "AMB",
            "EMER",
            "HH",
            "PRENC",
            "IMP",
            "ACUTE",
            "NONAC",
            "SS",
            "OBSENC",
            "FLD",
            "VR",
        )
    },
    *{("urn:oid:2.16.578.1.12.4.1.1.8406", c) for c in ("1", "2", "3")},
}
# TERMINOLOGY.md "Do not use as known".
FORBIDDEN_CODES = {"414015000", "359811007", "1290711000000105", "100384-7", "41853-3", "1E71"}
BASE = "https://mkopper-cds.example/fhir"


@pytest.fixture(scope="module")
def knowledge() -> Any:
    return load_knowledge()


@pytest.fixture(scope="module")
def raw_content() -> dict[str, Any]:
    with default_content_path().open("rb") as handle:
        return tomllib.load(handle)


# --- The limits the issue names ---------------------------------------------------------------


def test_every_summary_under_140_characters_in_both_languages(
    raw_content: dict[str, Any],
) -> None:
    # Read from the raw TOML, so a lax model could not hide a long summary.
    for key, finding in raw_content["findings"].items():
        for language in LANGUAGES:
            assert len(finding["summary"][language]) < 140, (key, language)


def test_every_finding_has_a_card_and_every_card_a_finding(knowledge: Any) -> None:
    assert set(knowledge.content.findings) == FINDINGS
    for language in LANGUAGES:
        for key in sorted(FINDINGS):
            issued = render_cards(
                knowledge, [Finding(key)], RenderContext("p"), language=language, max_cards=3
            )
            assert [item.finding for item in issued] == [key]
            card = issued[0].card
            assert card.source.topic is not None and card.source.topic.code == key
            assert len(card.summary) < 140


def test_every_link_is_https_and_from_the_seed_or_terminology(knowledge: Any) -> None:
    for name, link in knowledge.content.links.items():
        assert link.url.startswith("https://"), name
        assert link.url in ALLOWED_URLS, name
        # The label names the very document the URL is.
        assert ALLOWED_URLS[link.url].lower() in link.label.nb.lower(), name


def test_every_link_is_used_by_a_card(knowledge: Any) -> None:
    used = {name for f in knowledge.content.findings.values() for name in f.links}
    assert used == set(knowledge.content.links)


def test_notification_and_isolation_are_at_least_warning(knowledge: Any) -> None:
    findings = knowledge.content.findings
    for key in ("notify-municipal-doctor", "isolation-inpatient", "droplet-precautions"):
        assert findings[key].indicator in ("warning", "critical"), key


def test_override_reasons_have_display_and_suppression_hours(knowledge: Any) -> None:
    reasons = knowledge.content.override_reasons
    assert {"already-notified", "measures-in-place", "not-relevant-for-contact"} <= set(reasons)
    assert reasons["not-relevant-for-contact"].suppress_hours == 0
    assert reasons["measures-in-place"].suppress_hours == 24
    assert (
        "already-notified" in knowledge.content.findings["notify-municipal-doctor"].override_reasons
    )


def test_service_texts_cover_the_catalog(knowledge: Any) -> None:
    assert set(knowledge.content.services) == set(SERVICE_IDS)
    registry = build_registry(knowledge, language="en")
    for service in registry:
        assert service.title == knowledge.content.services[service.id].title.en


def test_guideline_metadata(knowledge: Any) -> None:
    guideline = knowledge.content.guideline
    assert guideline.owner == "Helse Bergen HF"
    assert guideline.version == "21.03.25"
    assert guideline.url is None  # the seed names no URL for the guideline itself
    assert knowledge.canonical_base == BASE


def test_check_content_summarises_a_valid_file() -> None:
    summary = check_content(None)
    assert "valid" in summary and "11 findings" in summary and "7 services" in summary


# --- ValueSets -------------------------------------------------------------------------------


def _valueset_files() -> list[Path]:
    return sorted(default_valueset_dir().glob("ValueSet-*.json"))


@pytest.mark.parametrize("path", _valueset_files(), ids=lambda p: p.name)
def test_valueset_is_draft_fhir_with_only_verified_codes(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    parse_resource(data)
    assert data["status"] == "draft"
    assert data["url"] == f"{BASE}/ValueSet/{data['id']}"
    assert path.name == f"ValueSet-{data['id']}.json"
    for include in data["compose"]["include"]:
        for concept in include["concept"]:
            pair = (include["system"], concept["code"])
            assert pair in VERIFIED_CODES, pair
            assert concept["code"] not in FORBIDDEN_CODES


def test_secondary_aerosol_procedures_are_marked_secondary() -> None:
    data = json.loads(
        (
            default_valueset_dir() / "ValueSet-aerosol-generating-procedures-secondary.json"
        ).read_text(encoding="utf-8")
    )
    assert data["description"].startswith("SECONDARY")


# --- Broken content is refused, naming file and key -------------------------------------------


def _mutated(tmp_path: Path, old: str, new: str) -> Path:
    text = default_content_path().read_text(encoding="utf-8")
    assert old in text, old
    path = tmp_path / "broken.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        (
            'summary.nb = "Varsle kommunelegen',
            'summary.nb = "' + "x" * 140 + " Varsle kommunelegen",
            "findings.notify-municipal-doctor.summary.nb",
        ),
        (
            'links = ["varsling", "fhi-varsling"]',
            'links = ["varsling", "no-such-link"]',
            "findings.notify-municipal-doctor.links",
        ),
        (
            'indicator = "critical"',
            'indicator = "urgent"',
            "findings.notify-municipal-doctor.indicator",
        ),
        (
            'url = "https://kvalitet.helse-bergen.no/docs/pub/dok00522.htm"',
            'url = "http://kvalitet.helse-bergen.no/docs/pub/dok00522.htm"',
            "links.varsling.url",
        ),
        ("suppress_hours = 720", "suppress_hours = -1", "override_reasons.already-notified"),
        ("{sections}.", "{patient}.", "guideline.footer"),
        ('merge_into = "droplet-precautions-outpatient"', 'merge_into = "nope"', "merge_into"),
        ('en = "Mpox (m-kopper)" }', 'fr = "Variole du singe" }', "guideline.title"),
        (
            'canonical_base = "https://mkopper-cds.example/fhir"',
            'canonical_base = "https://hospital.example/fhir"',
            "terminology.canonical_base",
        ),
    ],
)
def test_broken_content_names_file_and_key(tmp_path: Path, old: str, new: str, key: str) -> None:
    path = _mutated(tmp_path, old, new)
    with pytest.raises(ContentError) as caught:
        check_content(path)
    assert str(path) in caught.value.message
    assert key in caught.value.message


def test_missing_service_text_is_refused(tmp_path: Path) -> None:
    path = _mutated(tmp_path, "[services.mkopper-order-sign]", "[services.mkopper-order-signed]")
    with pytest.raises(ContentError) as caught:
        check_content(path)
    assert "services.mkopper-order-sign: missing" in caught.value.message
    assert str(path) in caught.value.message


def test_unparsable_and_missing_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[guideline\n", encoding="utf-8")
    with pytest.raises(ContentError, match="not valid TOML"):
        load_knowledge(path)
    with pytest.raises(ContentError, match="file not found"):
        load_knowledge(tmp_path / "absent.toml")


def test_broken_valueset_is_refused_naming_the_file(tmp_path: Path) -> None:
    directory = tmp_path / "valuesets"
    shutil.copytree(default_valueset_dir(), directory)
    broken = directory / "ValueSet-nasal-oxygen.json"
    data = json.loads(broken.read_text(encoding="utf-8"))
    data["compose"] = {"include": "not a list"}
    broken.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ContentError) as caught:
        load_knowledge(None, valueset_dir=directory)
    assert "ValueSet-nasal-oxygen.json" in caught.value.message
    assert "compose.include" in caught.value.message


def test_missing_valueset_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "valuesets"
    shutil.copytree(default_valueset_dir(), directory)
    (directory / "ValueSet-mkopper-diagnosis.json").unlink()
    with pytest.raises(ContentError, match="ValueSet/mkopper-diagnosis"):
        load_knowledge(None, valueset_dir=directory)
