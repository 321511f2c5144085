"""The plain card cap (``cut_to``): what it keeps and which findings it reports as cut."""

from __future__ import annotations

from cds_hooks.models import Card, Source
from cds_hooks.services import IssuedCard, cut_to


def _item(finding: str, *merged: str) -> IssuedCard:
    card = Card(summary=finding, indicator="info", source=Source(label="test"))
    return IssuedCard(card=card, finding=finding, merged=merged)


def test_keeps_the_first_cards_and_names_every_finding_it_cuts() -> None:
    items = [_item("a"), _item("b"), _item("c", "d"), _item("e")]
    fitted = cut_to(items, 2)
    assert [item.finding for item in fitted.issued] == ["a", "b"]
    assert fitted.cut == ("c", "d", "e")


def test_no_limit_keeps_everything() -> None:
    items = [_item("a"), _item("b")]
    fitted = cut_to(items, None)
    assert fitted.issued == items
    assert fitted.cut == ()
