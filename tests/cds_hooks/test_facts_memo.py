"""The facts keep what a concept or a text says per Knowledge: the same verdicts as reading
afresh, never an answer of older content, and never more than a bounded number kept."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest

from cds_hooks import facts
from cds_hooks.errors import ContentError
from cds_hooks.facts import Sources, Status, derive_facts, names_mkopper
from cds_hooks.knowledge import Knowledge, ValueSetCodes, load_knowledge

SCT = "http://snomed.info/sct"
ICD = "http://hl7.org/fhir/sid/icd-10"
VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CLIN = "http://terminology.hl7.org/CodeSystem/condition-clinical"

# Names, negations, exposure, nynorsk and every dash people type.
TEXTS = [
    "Mpox",
    "Mistenkt m-kopper",
    "Mistenkt m\u2013kopper",  # en dash
    "m\u2011kopper",  # non-breaking hyphen
    "m\u00adkopper",  # soft hyphen
    "M\u2014kopper bekreftet",  # em dash
    "m kopper",
    "Apekoppar",  # nynorsk
    "Mistanke om m-koppar",
    "Mpox utelukket",
    "Mpox utelukka",  # nynorsk
    "M-kopper avkrefta",
    "ikke m-kopper",
    "Ingen tegn på mpox",
    "vaksine mot mpox",
    "mpox-vaksinert",
    "Mistenkt mpox, ikke bekreftet",
    "Ikke feber. Mpox mistenkt",
    "Nærkontakt med mpox",
    "Vannkopper",
    "kopper",
    "Hypertensjon",
    "",
]


def concepts() -> list[Any]:
    """Every shape a Condition's code takes: text only, a display, a code with words."""
    shapes: list[Any] = [None, "Mpox", {}, {"coding": "B04"}, {"text": 3}]
    for text in TEXTS:
        shapes += [
            {"text": text},
            {"coding": [{"system": "urn:local", "display": text}]},
            {"coding": [{"system": SCT, "code": "359814004"}], "text": text},
            {"coding": [{"system": ICD, "code": " B04.9 ", "display": text}]},
            {"coding": [{"system": ICD, "code": "B08.0"}, {"display": "Pneumoni"}], "text": text},
            {"coding": [{"system": "urn:local", "code": "x"}, {"code": "b04.x"}], "text": text},
        ]
    return shapes


def read_afresh(knowledge: Knowledge, concept: Any) -> bool:
    """names_mkopper as written before anything was kept: every reading from the start."""
    diagnosis = knowledge.valueset("mkopper-diagnosis")
    systems = {s for s, c in diagnosis.codes if facts._ICD_SUBDIVISION.match(c)}
    icd_codes = {c for s, c in diagnosis.codes if s in systems}
    codings = facts._codings(concept)
    texts = [display for _, _, display in codings if display]
    if isinstance(concept, dict) and isinstance(concept.get("text"), str):
        texts.append(concept["text"])
    mentions = [facts._mention(knowledge.content.matching, text) for text in texts]
    if False in mentions and True not in mentions:
        return False
    for system, code, _ in codings:
        if diagnosis.contains(system, code):
            return True
        local_icd = system is None or system in systems or "icd" in system.lower()
        match = facts._ICD_SUBDIVISION.match(code.upper()) if code else None
        if local_icd and match is not None and match.group(1) in icd_codes:
            return True
    return True in mentions


def condition(code: Any, cid: str, ver: str = "confirmed", clin: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": "Patient/p"},
        "code": code,
        "verificationStatus": {"coding": [{"system": VER, "code": ver}]},
        "clinicalStatus": {"coding": [{"system": CLIN, "code": clin}]},
    }


@pytest.fixture
def knowledge() -> Knowledge:
    return load_knowledge()


@pytest.fixture
def unkept(knowledge: Knowledge) -> Knowledge:
    """A Knowledge whose readers keep nothing: every verdict is read afresh."""
    facts._readers(knowledge)  # the other one keeps as the service does
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(facts, "_MEMO_SIZE", 0)
        fresh = load_knowledge()
        facts._readers(fresh)
    return fresh


def test_kept_verdicts_are_the_verdicts_read_afresh(
    knowledge: Knowledge, unkept: Knowledge
) -> None:
    shapes = concepts()
    afresh = [read_afresh(knowledge, concept) for concept in shapes]
    assert [names_mkopper(unkept, concept) for concept in shapes] == afresh
    assert facts._readers(unkept)._concept.cache_info().currsize == 0
    first = [names_mkopper(knowledge, concept) for concept in shapes]
    again = [names_mkopper(knowledge, concept) for concept in reversed(shapes)][::-1]
    assert first == afresh
    assert again == afresh
    assert facts._readers(knowledge)._concept.cache_info().hits > 0
    # Spot checks, so that both readings cannot be wrong together.
    verdict = dict(zip((repr(c) for c in shapes), afresh, strict=True))
    assert verdict[repr({"text": "Mistenkt m\u2013kopper"})] is True
    assert verdict[repr({"text": "Apekoppar"})] is True
    assert verdict[repr({"text": "Mpox utelukka"})] is False
    assert verdict[repr({"text": "Vannkopper"})] is False
    coded = {"coding": [{"system": SCT, "code": "359814004"}], "text": "Mpox utelukket"}
    assert verdict[repr(coded)] is False  # the words rule out the code
    coded["text"] = "Hypertensjon"
    assert verdict[repr(coded)] is True
    second = {"coding": [{"system": "urn:local", "code": "x"}, {"code": "b04.x"}], "text": "Astma"}
    assert names_mkopper(knowledge, second) is True  # the second coding decides
    second["coding"] = second["coding"][:1]
    assert names_mkopper(knowledge, second) is False


def test_a_concept_as_json_text_reads_as_the_concept(knowledge: Knowledge) -> None:
    reader = facts.condition_reader(knowledge)
    shapes = [*concepts(), None, {"text": "Mpox " + "x" * 2000}]
    afresh = [read_afresh(knowledge, concept) for concept in shapes]
    for _ in range(2):  # the second time from what was kept
        assert [reader(json.dumps(c).encode()) for c in shapes] == afresh
        assert [reader(json.dumps(c, ensure_ascii=False).encode()) for c in shapes] == afresh
    assert facts._readers(knowledge)._json.cache_info().hits > 0
    assert True in afresh and False in afresh


@pytest.mark.parametrize("text", TEXTS)
def test_kept_text_verdicts_are_the_text_read_afresh(knowledge: Knowledge, text: str) -> None:
    matching = knowledge.content.matching
    readers = facts._readers(knowledge)
    assert readers.mention(text) is facts._mention(matching, text)
    assert readers.mention(text) is facts._mention(matching, text)  # now from what was kept
    assert facts.text_names_mkopper(matching, text) is (readers.mention(text) is True)
    assert readers.exposure(text) is facts._exposure(matching, text)
    assert readers.exposure(text) is facts._exposure(matching, text)
    assert readers.exposure(text) is (text == "Nærkontakt med mpox")


def test_a_long_record_reads_as_its_one_mkopper_condition(knowledge: Knowledge) -> None:
    noise = ["Hypertensjon", "Astma", "Vannkopper", "Mpox utelukket", "Nærkontakt med mpox"]
    record = [condition({"text": noise[i % 5]}, f"c{i}") for i in range(1000)]
    case = condition({"text": "Mistenkt m\u2011kopper"}, "case", ver="unconfirmed")
    alone = derive_facts(knowledge, Sources(conditions=[case]))
    for _ in range(2):
        long = derive_facts(knowledge, Sources(conditions=[*record, case, *record]))
        assert long == alone
        assert long.status is Status.SUSPECTED
        assert long.status_evidence == ("Condition/case",)


def test_new_matching_is_not_answered_from_the_old(knowledge: Knowledge) -> None:
    text = {"text": "Mpox frikjent"}
    assert names_mkopper(knowledge, text)
    matching = knowledge.content.matching
    stricter = matching.model_copy(
        update={"negation_after": (*matching.negation_after, "frikjent")}
    )
    edited = dataclasses.replace(
        knowledge, content=knowledge.content.model_copy(update={"matching": stricter})
    )
    assert not names_mkopper(edited, text)
    assert names_mkopper(knowledge, text)  # the old content still reads as it did
    sources = Sources(conditions=[condition(text, "c1")])
    assert derive_facts(knowledge, sources).status is Status.CONFIRMED
    assert derive_facts(edited, sources).status is Status.NONE


def test_new_exposure_triggers_are_not_answered_from_the_old(knowledge: Knowledge) -> None:
    sources = Sources(conditions=[condition({"text": "Nærkontakt med mpox"}, "c1")])
    assert derive_facts(knowledge, sources).status is Status.NONE
    matching = knowledge.content.matching.model_copy(update={"exposure_before": ()})
    edited = dataclasses.replace(
        knowledge, content=knowledge.content.model_copy(update={"matching": matching})
    )
    assert derive_facts(edited, sources).status is Status.CONFIRMED
    assert derive_facts(knowledge, sources).status is Status.NONE


def test_new_valuesets_are_not_answered_from_the_old(knowledge: Knowledge) -> None:
    code = {"coding": [{"system": SCT, "code": "359814004"}]}
    assert names_mkopper(knowledge, code)
    url = knowledge.valueset_url("mkopper-diagnosis")
    diagnosis = knowledge.valuesets[url]
    narrower = ValueSetCodes(url, diagnosis.codes - {(SCT, "359814004")})
    edited = dataclasses.replace(knowledge, valuesets={**knowledge.valuesets, url: narrower})
    assert edited.valueset("mkopper-diagnosis") is narrower
    assert not names_mkopper(edited, code)
    assert names_mkopper(knowledge, code)


def test_valuesets_are_found_under_the_content_canonical_base(knowledge: Knowledge) -> None:
    terminology = knowledge.content.terminology.model_copy(
        update={"canonical_base": "https://other.example/fhir"}
    )
    moved = dataclasses.replace(
        knowledge, content=knowledge.content.model_copy(update={"terminology": terminology})
    )
    with pytest.raises(ContentError, match=re.escape("https://other.example/fhir/ValueSet/mkop")):
        moved.valueset("mkopper-diagnosis")
    with pytest.raises(ContentError, match="ValueSet/no-such-set is not loaded"):
        knowledge.valueset("no-such-set")
    assert knowledge.valueset("mkopper-diagnosis").url == knowledge.valueset_url(
        "mkopper-diagnosis"
    )


def test_what_is_kept_is_bounded(knowledge: Knowledge, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(facts, "_MEMO_SIZE", 8)
    small = load_knowledge()
    readers = facts._readers(small)
    for i in range(50):
        assert not names_mkopper(small, {"text": f"Diagnose {i}"})
        assert not names_mkopper(small, {"coding": [{"system": "urn:local", "code": f"{i}"}]})
        assert readers.exposure(f"Kontakt med mpox {i}")
    assert readers._text.cache_info().currsize == 8
    assert readers._exposure.cache_info().currsize == 8
    assert readers._concept.cache_info().currsize == 8
    # The most recent are kept, the oldest went first.
    hits = readers._text.cache_info().hits
    assert readers.mention("Diagnose 49") is None
    assert readers._text.cache_info().hits == hits + 1
    assert readers.mention("Diagnose 0") is None
    assert readers._text.cache_info().hits == hits + 1


def test_large_concepts_are_read_every_time_not_kept(knowledge: Knowledge) -> None:
    readers = facts._readers(knowledge)
    note = "Pasienten har hatt feber og utslett i flere dager. " * 100 + "Mpox utelukket."
    many = {"coding": [{"system": "urn:local", "code": str(i)} for i in range(20)]}
    many["coding"].append({"display": "Mistenkt mpox"})
    for _ in range(2):
        assert not names_mkopper(knowledge, {"text": note})
        assert names_mkopper(knowledge, {"text": note[:-16] + " Mistenkt mpox"})
        assert names_mkopper(knowledge, many)
    assert readers._text.cache_info().currsize == 1  # "Mistenkt mpox" of the display only
    assert readers._concept.cache_info().currsize == 0
