"""Cards reach the clinician in the language the service is set to, and each language's text is
its own (docs/clinical-safety.md, hazard "wrong language")."""

from __future__ import annotations

import re
from typing import Any

import pytest

from cds_hooks.knowledge import load_knowledge
from tests.support.golden import iter_cases

# Words that are English only: a Norwegian card text holding one was pasted from the English.
ENGLISH_ONLY = re.compile(r"\b(the|and|should|with|patient's|staff|notify|wear)\b", re.IGNORECASE)
CASE = next(c for c in iter_cases() if c.id == "mkopper-patient-view/suspected-snomed-inpatient")


@pytest.fixture(scope="module")
def knowledge() -> Any:
    return load_knowledge()


def test_every_card_text_differs_between_the_two_languages(knowledge: Any) -> None:
    for key, finding in knowledge.content.findings.items():
        for part in ("topic", "summary", "detail"):
            text = getattr(finding, part)
            assert text.nb.strip() != text.en.strip(), (key, part)


def test_norwegian_card_texts_hold_no_english_only_words(knowledge: Any) -> None:
    for key, finding in knowledge.content.findings.items():
        for part in ("topic", "summary", "detail"):
            found = ENGLISH_ONLY.findall(getattr(finding, part).nb)
            assert not found, (key, part, found)


@pytest.mark.parametrize("language", ["nb", "en"])
def test_the_language_setting_reaches_every_card(
    make_app: Any, knowledge: Any, language: str
) -> None:
    client = make_app(CDS_LANGUAGE=language).test_client()
    response = client.post(f"/cds-services/{CASE.service_id}", json=CASE.request)
    assert response.status_code == 200
    cards = response.get_json()["cards"]
    assert cards
    for card in cards:
        finding = knowledge.content.findings[card["source"]["topic"]["code"]]
        assert card["summary"] == finding.summary.get(language)
