"""Cards as the SMART page shows them: urgency first, PPE lists as checklists.

Card detail is CDS Hooks markdown from the guideline content. Only the subset
the content uses is rendered (paragraphs, ``-`` lists, ``**bold**``,
``*emphasis*``, ``_emphasis_``, ``---`` rules and ``[label](https://...)``
links); everything else stays plain text, and every piece of text is
HTML-escaped before markup is added, so content can never inject HTML into
the page.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from markupsafe import Markup, escape

from cds_hooks.knowledge import LANGUAGES, Language
from cds_hooks.models import URGENCY, Card
from cds_hooks.services import IssuedCard

TEXT_FILE = Path(__file__).with_name("text.toml")

_LIST_ITEM = re.compile(r"^\s*[-*]\s+(.*)$")
_LINK = re.compile(r"\[([^\]\n]+)\]\((https://[^\s)]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_EMPHASIS = re.compile(r"(?<![*\w])\*(?!\s)(.+?)(?<!\s)\*(?![*\w])")
_UNDERSCORE = re.compile(r"(?<![_\w])_(?!\s)(.+?)(?<!\s)_(?![_\w])")
_RULE = re.compile(r"^(?:-{3,}|\*{3,}|_{3,})$")


@lru_cache(maxsize=1)
def _all_texts() -> dict[str, dict[str, str]]:
    with TEXT_FILE.open("rb") as handle:
        data = tomllib.load(handle)
    return {lang: {str(k): str(v) for k, v in data[lang].items()} for lang in LANGUAGES}


def page_texts(language: Language) -> Mapping[str, str]:
    """The page chrome in ``language``."""
    return _all_texts()[language]


@dataclass(frozen=True, slots=True)
class Block:
    """A paragraph (``text``), a checklist (``items``) or a thematic break (``rule``)."""

    text: Markup | None = None
    items: tuple[Markup, ...] = ()
    rule: bool = False


@dataclass(frozen=True, slots=True)
class LinkView:
    label: str
    url: str


@dataclass(frozen=True, slots=True)
class CardView:
    finding: str
    indicator: str
    summary: str
    blocks: tuple[Block, ...]
    links: tuple[LinkView, ...]
    source: str


def _emphasis(html: str) -> str:
    html = _BOLD.sub(r"<strong>\1</strong>", html)
    html = _EMPHASIS.sub(r"<em>\1</em>", html)
    return _UNDERSCORE.sub(r"<em>\1</em>", html)


def inline(text: str) -> Markup:
    """Escape ``text``, then turn the inline markdown the content uses into markup.

    Emphasis is applied outside link URLs only, so an underscore in a URL stays as it is.
    """
    html = str(escape(text))
    out: list[str] = []
    position = 0
    for link in _LINK.finditer(html):
        out.append(_emphasis(html[position : link.start()]))
        out.append(
            f'<a href="{link.group(2)}" rel="noopener noreferrer" target="_blank">'
            f"{_emphasis(link.group(1))}</a>"
        )
        position = link.end()
    out.append(_emphasis(html[position:]))
    return Markup("".join(out))  # noqa: S704 - built from escaped text only


def blocks(markdown: str | None) -> tuple[Block, ...]:
    """Split card detail into paragraphs and checklists (every list is one)."""
    out: list[Block] = []
    paragraph: list[str] = []
    items: list[str] = []

    def flush() -> None:
        if paragraph:
            out.append(Block(text=inline(" ".join(paragraph))))
            paragraph.clear()
        if items:
            out.append(Block(items=tuple(inline(item) for item in items)))
            items.clear()

    for raw in (markdown or "").splitlines():
        line = raw.strip()
        if not line:
            flush()
            continue
        if _RULE.match(line):
            flush()
            out.append(Block(rule=True))
            continue
        item = _LIST_ITEM.match(line)
        if item:
            if paragraph:
                flush()
            items.append(item.group(1))
        elif items and raw[:1].isspace():
            items[-1] += " " + line  # a wrapped list item
        else:
            if items:
                flush()
            paragraph.append(line)
    flush()
    return tuple(out)


def card_view(item: IssuedCard) -> CardView:
    card = item.card
    return CardView(
        finding=item.finding,
        indicator=card.indicator,
        summary=card.summary,
        blocks=blocks(card.detail),
        links=tuple(
            LinkView(label=link.label, url=str(link.url))
            for link in card.links or []
            if link.type == "absolute"
        ),
        source=card.source.label,
    )


def most_urgent_first(cards: Iterable[Card]) -> list[Card]:
    """Stable sort by indicator: the services' own order holds within one urgency."""
    return sorted(cards, key=lambda card: URGENCY[card.indicator])
