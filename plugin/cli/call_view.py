"""Cards in a terminal, for the `call` command: what a clinician would see, in order.

Each card is a panel coloured by its indicator, the summary as its title, the
detail rendered from markdown, then the source, links, suggestions (with what
accepting them would do) and the override reasons the EHR would offer.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console, Group, RenderableType
from rich.markdown import Markdown
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

from cds_hooks.models import Card

STYLES = {"critical": "bold red", "warning": "bold yellow", "info": "bold blue"}


def _card_body(card: Card) -> RenderableType:
    parts: list[RenderableType] = [Text(card.summary, style="bold")]
    if card.detail:
        parts.append(Text(""))
        parts.append(Markdown(card.detail))
    source = Text("Source: ", style="dim")
    source.append(card.source.label)
    if card.source.url:
        source.append(f" <{card.source.url}>", style="dim")
    parts.append(source)
    if card.links:
        parts.append(Text("Links:", style="bold"))
        for link in card.links:
            line = Text("  • ")
            line.append(link.label)
            if link.type != "absolute":
                line.append(f" ({link.type} app)", style="dim")
            parts.append(line)
            parts.append(Text(f"    {link.url}", style="cyan", overflow="fold"))
    if card.suggestions:
        parts.append(Text(f"Suggestions ({card.selectionBehavior}):", style="bold"))
        for suggestion in card.suggestions:
            line = Text("  • ")
            line.append(suggestion.label)
            if suggestion.isRecommended:
                line.append(" [recommended]", style="green")
            parts.append(line)
            for action in suggestion.actions or []:
                kind = (action.resource or {}).get("resourceType", "")
                what = f"{action.type} {kind}".strip()
                parts.append(Text(f"      {what}: {action.description}", style="dim"))
    if card.overrideReasons:
        reasons = "; ".join(reason.display or reason.code for reason in card.overrideReasons)
        parts.append(Text(f"Override reasons: {reasons}", style="dim"))
    if card.uuid:
        parts.append(Text(f"card {card.uuid}", style="dim"))
    return Group(*parts)


def card_panel(card: Card) -> Panel:
    style = STYLES.get(card.indicator, "bold")
    # The summary goes in the body: a panel title is cut to one line.
    title = Text(card.indicator.upper(), style=style)
    return Panel(_card_body(card), title=title, title_align="left", border_style=style)


def print_cards(
    console: Console, service_id: str, hook: str, cards: Sequence[Card], elapsed_ms: float
) -> None:
    count = f"{len(cards)} card" + ("" if len(cards) == 1 else "s")
    console.print(
        f"[bold]{escape(service_id)}[/bold] ({escape(hook)}): {count} in {elapsed_ms:.0f} ms"
    )
    if not cards:
        console.print("No cards: the service has nothing to say for this patient at this moment.")
    for card in cards:
        console.print(card_panel(card))
