"""A service call answers with the bytes it gave before card templates: the cards' wire form
from their templates against Card.wire() for every golden case, through the whole app."""

from __future__ import annotations

import re
from typing import Any

import pytest

from cds_hooks.cards import RenderedCard
from tests.support.golden import iter_cases

CASES = [case for case in iter_cases() if case.expected["cards"]]
# The uuids differ per call (the card's sealed token, the suggestion's uuid).
UUID = re.compile(rb'"uuid":"[^"]*"')


def _answers(client: Any) -> list[bytes]:
    answers = []
    for case in CASES:
        body = {
            k: v for k, v in case.request.items() if k not in ("fhirServer", "fhirAuthorization")
        }
        response = client.post(f"/cds-services/{case.service_id}", json=body)
        assert response.status_code == 200, case.id
        answers.append(UUID.sub(b'"uuid":"*"', response.get_data()))
    return answers


@pytest.mark.parametrize("language", ["nb", "en"])
def test_the_answers_are_the_bytes_card_wire_gives(
    make_app: Any, monkeypatch: pytest.MonkeyPatch, language: str
) -> None:
    client = make_app(CDS_LANGUAGE=language).test_client()
    from_templates = _answers(client)
    monkeypatch.setattr(RenderedCard, "wire", lambda self: self.card.wire())
    assert _answers(client) == from_templates
    assert len(CASES) > 20 and all(b'"cards":[{' in answer for answer in from_templates)
