"""Cards: findings rendered from the content file into CDS Hooks cards.

One card kind per finding. A finding whose content names ``merge_into`` is folded into that
finding's card when both are present (related advice merged, not repeated). Cards are sorted by
urgency (indicator, then the content's priority). Under the card cap, :class:`CapFitter` folds
a card whose content names ``merge_when_cut`` into the first of those cards still shown rather
than cut it; what cannot be folded is cut and named. Every card of a call gets fresh uuids, so
feedback can be joined to the very card shown.

What a card says apart from the call (its texts, source, links, override reasons) is made and
validated once per content object, group of findings and language (a template). A call's card
(:class:`RenderedCard`) is its template and what the call fills in: the uuids, the evidence
line and the notification's Communication. It is made only when it is shown, so the cards that
suppression drops, the cap folds or cuts cost no rendering; the wire form comes from the
template's (:class:`~cds_hooks.models.WireTemplate`).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cds_hooks.facts import NOTIFICATION_CATEGORY, Status
from cds_hooks.knowledge import Content, FindingContent, Knowledge, Language
from cds_hooks.models import (
    URGENCY,
    Action,
    Card,
    Coding,
    Link,
    Source,
    Suggestion,
    WireTemplate,
)
from cds_hooks.rules import NOTIFY_MUNICIPAL_DOCTOR, Finding
from cds_hooks.services import Fitted, IssuedCard, cut_to

# context.userId as a FHIR reference the Communication may carry as its sender (the CDS Hooks
# user types that can send; an id as FHIR defines it).
_SENDER = re.compile(
    r"^(?:Practitioner|PractitionerRole|Patient|RelatedPerson)/[A-Za-z0-9\-.]{1,64}$"
)


@dataclass(frozen=True, slots=True)
class RenderContext:
    """What a card may refer to: the hook context's ids, never other patient data."""

    patient_id: str
    encounter_id: str | None = None
    user_id: str | None = None  # context.userId ("Practitioner/123")
    now: dt.datetime | None = None  # the call's clock


def _urgency(content: FindingContent, key: str) -> tuple[int, int, str]:
    return (URGENCY[content.indicator], content.priority, key)


def _group(knowledge: Knowledge, findings: Sequence[Finding]) -> list[list[Finding]]:
    """Findings grouped per card: the host first, then what is merged into it."""
    findings_content = knowledge.content.findings
    present = {finding.key for finding in findings}
    groups: dict[str, list[Finding]] = {}
    for finding in findings:
        host = findings_content[finding.key].merge_into
        owner = host if host is not None and host in present else finding.key
        groups.setdefault(owner, [])
        if owner == finding.key:
            groups[owner].insert(0, finding)
        else:
            groups[owner].append(finding)
    return sorted(groups.values(), key=lambda g: _urgency(findings_content[g[0].key], g[0].key))


def _footer(knowledge: Knowledge, sections: Sequence[str], language: Language) -> str:
    guideline = knowledge.content.guideline
    return guideline.footer.get(language).format(
        owner=guideline.owner,
        title=guideline.title.get(language),
        version=guideline.version,
        sections=", ".join(sections),
    )


def notification_record(
    knowledge: Knowledge, context: RenderContext, evidence: Sequence[str], language: Language
) -> dict[str, Any]:
    """A FHIR R4 Communication recording that kommunelegen was notified by telephone.

    Communication fits: it records information that was conveyed to a recipient. Only text is
    used for the recipient, the medium and the reason, because no verified code exists for them.
    """
    text = knowledge.content.notification_record
    resource: dict[str, Any] = {
        "resourceType": "Communication",
        "status": "completed",
        # The service's own marker, so that the record is recognised when it is read back.
        "category": [
            {
                "coding": [
                    {
                        "system": knowledge.codesystem_url("card-topic"),
                        "code": NOTIFICATION_CATEGORY,
                    }
                ]
            }
        ],
        "subject": {"reference": f"Patient/{context.patient_id}"},
        "recipient": [{"display": text.recipient.get(language)}],
        "medium": [{"text": text.medium.get(language)}],
        "reasonCode": [{"text": text.reason.get(language)}],
        "payload": [{"contentString": text.payload.get(language)}],
    }
    if context.encounter_id:
        resource["encounter"] = {"reference": f"Encounter/{context.encounter_id}"}
    if context.now is not None:
        resource["sent"] = context.now.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if context.user_id is not None and _SENDER.match(context.user_id):
        resource["sender"] = {"reference": context.user_id}
    about = [
        {"reference": ref}
        for ref in evidence
        if ref.split("/", 1)[0] in ("Condition", "Observation") and not ref.endswith("/(no id)")
    ]
    if about:
        resource["about"] = about
    return resource


def _basis_line(knowledge: Knowledge, finding: Finding, language: Language) -> str | None:
    """ "Grunnlag: prøvesvar påvist 24.11.2026 (bekreftet)": kind and date, never a name or id."""
    evidence, basis = knowledge.content.evidence, finding.basis
    if evidence is None or basis is None:
        return None
    template = {
        "laboratory": evidence.laboratory,
        "diagnosis": evidence.diagnosis,
        "order": evidence.order,
    }.get(basis.kind)
    if template is None:
        return None
    status = evidence.confirmed if basis.status is Status.CONFIRMED else evidence.suspected
    date = basis.date.strftime("%d.%m.%Y") if basis.date else evidence.undated.get(language)
    text = template.get(language).format(date=date, status=status.get(language))
    return evidence.line.get(language).format(basis=text)


@dataclass(frozen=True, slots=True)
class _Template:
    """What a card of one group of findings says in one language, whatever the call: the card
    validated once, and its detail without the evidence line, which goes between the two."""

    card: WireTemplate[Card]
    detail_head: str
    detail_tail: str
    # The card's kind (its source.topic code) and the override reason codes it offers.
    kind: str
    reasons: tuple[str, ...]
    # The notification's suggestion and action, validated with a stand-in resource: the uuid
    # and the Communication (encounter, time, sender, evidence) are the call's.
    suggestion: WireTemplate[Suggestion] | None = None
    action: WireTemplate[Action] | None = None


# A group of findings by what its text depends on: each finding's key and variant, in order.
_TemplateKey = tuple[Language, tuple[tuple[str, str | None], ...]]


# Per content object, and gone with it: a content loaded again or changed (a new object) gets
# its own, never text made from another. The groups are bounded by the content (hosts, what
# merges into them, variants); the cap is a backstop.
_TEMPLATES: dict[int, dict[_TemplateKey, _Template]] = {}
_MAX_TEMPLATES = 1024


def _templates_of(content: Content) -> dict[_TemplateKey, _Template]:
    key = id(content)
    templates = _TEMPLATES.get(key)
    if templates is None:
        templates = _TEMPLATES[key] = {}
        weakref.finalize(content, _TEMPLATES.pop, key, None)
    return templates


def _template(knowledge: Knowledge, group: Sequence[Finding], language: Language) -> _Template:
    templates = _templates_of(knowledge.content)
    key: _TemplateKey = (language, tuple((f.key, f.variant) for f in group))
    template = templates.get(key)
    if template is None:
        template = _build_template(knowledge, group, language)
        if len(templates) < _MAX_TEMPLATES:
            templates[key] = template
    return template


def _build_template(
    knowledge: Knowledge, group: Sequence[Finding], language: Language
) -> _Template:
    content = knowledge.content
    host = group[0]
    host_content = content.findings[host.key]
    parts = [content.findings[f.key] for f in group]
    host_variant = host_content.variants.get(host.variant) if host.variant else None
    summary = (host_variant or host_content).summary.get(language)

    sections = list(dict.fromkeys(section for part in parts for section in part.sections))
    details = []
    for finding, part in zip(group, parts, strict=True):
        variant = part.variants.get(finding.variant) if finding.variant else None
        text = (variant or part).detail.get(language)
        # A merged part is headed by its topic, so that the card still reads as sections.
        details.append(text if finding is host else f"**{part.topic.get(language)}**\n\n{text}")
    detail_head = "\n\n".join(details)
    detail_tail = f"\n\n---\n\n_{_footer(knowledge, sections, language)}_"

    links: dict[str, Link] = {}
    for part in parts:
        for name in part.links:
            link = content.links[name]
            links.setdefault(
                link.url, Link(label=link.label.get(language), url=link.url, type="absolute")
            )
    reasons = list(dict.fromkeys(reason for part in parts for reason in part.override_reasons))
    reason_system = knowledge.codesystem_url("override-reason")

    suggestion: WireTemplate[Suggestion] | None = None
    action: WireTemplate[Action] | None = None
    if host.key == NOTIFY_MUNICIPAL_DOCTOR:
        record = content.notification_record
        action = WireTemplate(
            Action(
                type="create",
                description=record.description.get(language),
                resource={"resourceType": "Communication"},
            ),
            filled=("resource",),
        )
        suggestion = WireTemplate(
            Suggestion(
                label=record.label.get(language),
                uuid=None,
                isRecommended=True,
                actions=[action.model],
            ),
            filled=("uuid", "actions"),
            items={"actions": action},
        )

    card = Card(
        uuid=None,
        summary=summary,
        detail=detail_head + detail_tail,
        indicator=host_content.indicator,
        source=Source.model_validate(
            {
                "label": content.guideline.source_label.get(language),
                "url": content.guideline.url,
                "topic": Coding(
                    system=knowledge.codesystem_url("card-topic"),
                    code=host.key,
                    display=host_content.topic.get(language),
                ),
            }
        ),
        suggestions=[suggestion.model] if suggestion else None,
        selectionBehavior="any" if suggestion else None,
        overrideReasons=[
            Coding(
                system=reason_system,
                code=reason,
                display=content.override_reasons[reason].display.get(language),
            )
            for reason in reasons
        ]
        or None,
        links=list(links.values()) or None,
    )
    template = WireTemplate(
        card,
        filled=("uuid", "detail", "suggestions"),
        items={"suggestions": suggestion} if suggestion else None,
    )
    return _Template(
        template, detail_head, detail_tail, host.key, tuple(reasons), suggestion, action
    )


@dataclass(frozen=True, slots=True)
class RenderedCard(IssuedCard):
    """A card of one group of findings, made from its template when it is shown.

    Until then it is its template and what the call fills in (the context, the evidence,
    fresh uuids): suppression, the cap and the seal read the finding, the kind, the override
    reasons and the uuid from the template, so a card folded into another, suppressed or cut
    is never made. :attr:`card` makes it once; :meth:`wire` gives its wire form from the
    template's."""

    knowledge: Knowledge = field(repr=False, compare=False)
    group: tuple[Finding, ...]
    context: RenderContext
    language: Language
    template: _Template
    # A field where the base has a property: field() so that the property is not its default.
    uuid: str = field()
    # The uuid of the notification's suggestion, for a card that offers one.
    suggestion_uuid: str | None = None
    merged: tuple[str, ...] = ()
    _card: Card | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def finding(self) -> str:  # type: ignore[override]
        return self.group[0].key

    @property
    def kind(self) -> str:
        return self.template.kind

    @property
    def reasons(self) -> tuple[str, ...]:
        return self.template.reasons

    @property
    def card(self) -> Card:
        card = self._card
        if card is None:
            card = self._make()
            object.__setattr__(self, "_card", card)
        return card

    def _make(self) -> Card:
        """The template with this call's uuid, evidence line and notification record."""
        template, host = self.template, self.group[0]
        basis = _basis_line(self.knowledge, host, self.language)
        detail = (
            f"{template.detail_head}\n\n{basis}{template.detail_tail}"
            if basis
            else template.detail_head + template.detail_tail
        )
        suggestions: list[Suggestion] | None = None
        if template.suggestion is not None and template.action is not None:
            resource = notification_record(
                self.knowledge, self.context, host.evidence, self.language
            )
            action = template.action.fill(resource=resource)
            suggestions = [template.suggestion.fill(uuid=self.suggestion_uuid, actions=[action])]
        return template.card.fill(uuid=self.uuid, detail=detail, suggestions=suggestions)

    def with_uuid(self, uuid: str) -> RenderedCard:
        return replace(self, uuid=uuid)

    def wire(self) -> dict[str, Any]:
        data = self.template.card.wire(self.card)
        return data if data is not None else self.card.wire()


def _issued(
    knowledge: Knowledge,
    group: Sequence[Finding],
    context: RenderContext,
    language: Language,
    merged: tuple[str, ...] = (),
) -> RenderedCard:
    """The card for this group in this call, with fresh uuids; made when it is shown."""
    template = _template(knowledge, group, language)
    return RenderedCard(
        knowledge=knowledge,
        group=tuple(group),
        context=context,
        language=language,
        template=template,
        uuid=str(uuid.uuid4()),
        suggestion_uuid=str(uuid.uuid4()) if template.suggestion is not None else None,
        merged=merged,
    )


def render_cards(
    knowledge: Knowledge,
    findings: Sequence[Finding],
    context: RenderContext,
    *,
    language: Language = "nb",
    max_cards: int | None = 3,
) -> list[IssuedCard]:
    """The cards for these findings, most urgent first, fitted under ``max_cards`` by
    :class:`CapFitter` (None: all, for a caller that fits them after suppression)."""
    issued: list[IssuedCard] = [
        _issued(knowledge, group, context, language) for group in _group(knowledge, findings)
    ]
    if max_cards is None:
        return issued
    return CapFitter(knowledge)(issued, max_cards).issued


class CapFitter:
    """The card cap that merges before it cuts (a :data:`~cds_hooks.services.Fitter`).

    While there are more cards than ``limit``, the least urgent card whose content names
    ``merge_when_cut`` is folded into the first of those cards that will be shown (one within
    the first ``limit``), which takes the template of its grown group and fresh uuids (neither
    card has been made yet: only the one shown is). When nothing more can be folded, the rest
    is cut as :func:`~cds_hooks.services.cut_to` does, and named.
    """

    def __init__(self, knowledge: Knowledge) -> None:
        self.knowledge = knowledge

    def __call__(self, items: Sequence[IssuedCard], limit: int | None) -> Fitted:
        cards = list(items)
        if limit is None:
            return cut_to(cards, limit)
        while len(cards) > limit:
            folded = self._fold_one(cards, limit)
            if folded is None:
                break
            cards = folded
        return cut_to(cards, limit)

    def _fold_one(self, cards: list[IssuedCard], limit: int) -> list[IssuedCard] | None:
        findings = self.knowledge.content.findings
        for index in range(len(cards) - 1, -1, -1):
            guest = cards[index]
            if not isinstance(guest, RenderedCard):
                continue
            for target in findings[guest.finding].merge_when_cut:
                host_index = next(
                    (
                        i
                        for i, card in enumerate(cards[:limit])
                        if i != index and card.finding == target
                    ),
                    None,
                )
                if host_index is None:
                    continue
                host = cards[host_index]
                if not isinstance(host, RenderedCard):
                    continue
                merged = _issued(
                    self.knowledge,
                    host.group + guest.group,
                    host.context,
                    host.language,
                    merged=(*host.merged, guest.finding, *guest.merged),
                )
                rest = [card for i, card in enumerate(cards) if i != index]
                return [merged if card is host else card for card in rest]
        return None
