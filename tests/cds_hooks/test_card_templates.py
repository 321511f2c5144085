"""Card templates: a card filled from its template is the card a fresh render gives, its wire
form is ``Card.wire()``'s to the byte, every call gets its own uuids and evidence, and a
changed content is never answered from the templates of the old one."""

from __future__ import annotations

import datetime as dt
import gc
import itertools
import json
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds_hooks import cards
from cds_hooks.cards import RenderContext, RenderedCard, render_cards
from cds_hooks.catalog import build_registry
from cds_hooks.facts import Basis, Status
from cds_hooks.knowledge import Knowledge, Language, load_knowledge
from cds_hooks.models import (
    Action,
    Card,
    CdsResponse,
    Coding,
    HookRequest,
    Link,
    Source,
    Suggestion,
    WireTemplate,
)
from cds_hooks.prefetch import resolve
from cds_hooks.rules import NOTIFY_MUNICIPAL_DOCTOR, Finding
from cds_hooks.services import StaticCard
from tests.support.golden import NOW, golden_clock, iter_cases

UUID_KEYS = ("uuid",)


@pytest.fixture(scope="module")
def knowledge() -> Knowledge:
    return load_knowledge()


def _fresh_card(
    knowledge: Knowledge, group: Sequence[Finding], context: RenderContext, language: Language
) -> Card:
    """The card as it was rendered before templates: every model built and validated."""
    content = knowledge.content
    host = group[0]
    host_content = content.findings[host.key]
    parts = [content.findings[f.key] for f in group]
    host_variant = host_content.variants.get(host.variant) if host.variant else None
    sections = list(dict.fromkeys(s for part in parts for s in part.sections))
    details = []
    for finding, part in zip(group, parts, strict=True):
        variant = part.variants.get(finding.variant) if finding.variant else None
        text = (variant or part).detail.get(language)
        details.append(text if finding is host else f"**{part.topic.get(language)}**\n\n{text}")
    detail = "\n\n".join(details)
    basis = cards._basis_line(knowledge, host, language)
    if basis:
        detail = f"{detail}\n\n{basis}"
    detail = f"{detail}\n\n---\n\n_{cards._footer(knowledge, sections, language)}_"
    links: dict[str, Link] = {}
    for part in parts:
        for name in part.links:
            link = content.links[name]
            links.setdefault(
                link.url, Link(label=link.label.get(language), url=link.url, type="absolute")
            )
    reasons = list(dict.fromkeys(r for part in parts for r in part.override_reasons))
    suggestions = None
    if host.key == NOTIFY_MUNICIPAL_DOCTOR:
        record = content.notification_record
        resource = cards.notification_record(knowledge, context, host.evidence, language)
        suggestions = [
            Suggestion(
                label=record.label.get(language),
                uuid=str(uuid.uuid4()),
                isRecommended=True,
                actions=[
                    Action(
                        type="create",
                        description=record.description.get(language),
                        resource=resource,
                    )
                ],
            )
        ]
    return Card(
        uuid=str(uuid.uuid4()),
        summary=(host_variant or host_content).summary.get(language),
        detail=detail,
        indicator=host_content.indicator,
        source=Source(
            label=content.guideline.source_label.get(language),
            url=content.guideline.url,  # type: ignore[arg-type]
            topic=Coding(
                system=knowledge.codesystem_url("card-topic"),
                code=host.key,
                display=host_content.topic.get(language),
            ),
        ),
        suggestions=suggestions,
        selectionBehavior="any" if suggestions else None,
        overrideReasons=[
            Coding(
                system=knowledge.codesystem_url("override-reason"),
                code=r,
                display=content.override_reasons[r].display.get(language),
            )
            for r in reasons
        ]
        or None,
        links=list(links.values()) or None,
    )


def _masked(data: Any) -> Any:
    """Wire JSON with every uuid replaced, for comparing two renderings."""
    if isinstance(data, dict):
        return {k: "*" if k in UUID_KEYS else _masked(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_masked(v) for v in data]
    return data


def _bytes(data: Any) -> str:
    return json.dumps(_masked(data), ensure_ascii=False)


def _groups(knowledge: Knowledge) -> list[list[Finding]]:
    """Every finding alone and in each variant, every merge the content names, and a few
    cards with more folded in, with and without an evidence line."""
    findings = knowledge.content.findings
    basis = Basis("laboratory", dt.date(2026, 11, 24), Status.CONFIRMED)
    evidence = ("Condition/c1", "Observation/o1", "Encounter/e9", "Condition/(no id)")
    groups: list[list[Finding]] = []
    for key, content in findings.items():
        for variant in [None, *content.variants]:
            groups.append([Finding(key, evidence, basis, variant)])
            groups.append([Finding(key, (), None, variant)])
        if content.merge_into:
            groups.append(
                [Finding(content.merge_into, evidence, basis), Finding(key, evidence, basis)]
            )
        for target in content.merge_when_cut:
            groups.append([Finding(target, evidence, basis), Finding(key, evidence)])
    groups.append(
        [
            Finding("droplet-precautions-outpatient", evidence, basis),
            Finding("cleaning-after-consultation", evidence),
            Finding("staff-in-vulnerable-groups", evidence),
        ]
    )
    return groups


CONTEXTS = [
    RenderContext("p1", "e1", "Practitioner/123", NOW),
    RenderContext("p2"),
    RenderContext("p3", None, "not a reference", NOW + dt.timedelta(hours=5)),
]


@pytest.mark.parametrize("language", ["nb", "en"])
def test_a_card_from_its_template_is_the_card_a_fresh_render_gives(
    knowledge: Knowledge, language: Language
) -> None:
    for group, context in itertools.product(_groups(knowledge), CONTEXTS):
        fresh = _fresh_card(knowledge, group, context, language)
        for _ in range(2):  # the first call makes the template, the second reuses it
            item = cards._issued(knowledge, group, context, language)
            assert item.template is not None
            assert _masked(item.card.model_dump()) == _masked(fresh.model_dump())
            assert _bytes(item.wire()) == _bytes(fresh.wire())
            assert _bytes(item.card.wire()) == _bytes(fresh.wire())
            # What suppression and the seal read without making the card: the card's own.
            whole = StaticCard(item.card, item.finding)
            assert (item.kind, item.reasons, item.uuid) == (whole.kind, whole.reasons, whole.uuid)


def test_every_golden_answer_from_templates_is_byte_for_byte_card_wire() -> None:
    knowledge = load_knowledge()
    checked = 0
    for language, cap in itertools.product(("nb", "en"), (3, 1, None)):
        registry = build_registry(knowledge, language=language, max_cards=cap, clock=golden_clock())
        for case in iter_cases():
            service = registry.get(case.service_id)
            request = HookRequest.model_validate(case.request)
            evaluation = service.evaluate(request, resolve(service, request))
            reference = CdsResponse(cards=evaluation.cards).wire()["cards"]
            answer = [item.wire() for item in evaluation.issued]
            # Not only the same JSON: the same keys in the same order, as the answer is written.
            assert json.dumps(answer) == json.dumps(reference), case.id
            for item in evaluation.issued:
                assert isinstance(item, RenderedCard) and item.template is not None
                assert item.template.card.wire(item.card) is not None  # from the template
                checked += 1
    assert checked > 100


def test_two_calls_get_their_own_uuids_and_evidence(knowledge: Knowledge) -> None:
    def notification(date: dt.date, evidence: tuple[str, ...], context: RenderContext) -> Any:
        basis = Basis("diagnosis", date, Status.SUSPECTED)
        (item,) = render_cards(
            knowledge, [Finding(NOTIFY_MUNICIPAL_DOCTOR, evidence, basis)], context
        )
        assert isinstance(item, RenderedCard)
        return item

    first = notification(dt.date(2026, 11, 20), ("Condition/a",), CONTEXTS[0])
    second = notification(
        dt.date(2026, 11, 21),
        ("Observation/b",),
        RenderContext("p9", "e9", "Practitioner/9", NOW + dt.timedelta(minutes=1)),
    )
    assert first.template is second.template  # one template, two calls
    one, two = first.wire(), second.wire()
    assert one["uuid"] != two["uuid"]
    assert one["suggestions"][0]["uuid"] != two["suggestions"][0]["uuid"]
    assert "20.11.2026" in one["detail"] and "21.11.2026" not in one["detail"]
    assert "21.11.2026" in two["detail"] and "20.11.2026" not in two["detail"]
    first_record = one["suggestions"][0]["actions"][0]["resource"]
    second_record = two["suggestions"][0]["actions"][0]["resource"]
    assert first_record["about"] == [{"reference": "Condition/a"}]
    assert second_record["about"] == [{"reference": "Observation/b"}]
    assert (first_record["subject"], first_record["encounter"], first_record["sender"]) == (
        {"reference": "Patient/p1"},
        {"reference": "Encounter/e1"},
        {"reference": "Practitioner/123"},
    )
    assert second_record["sent"] == "2026-11-25T10:01:00Z"
    assert first_record["sent"] == "2026-11-25T10:00:00Z"
    # Nothing of either call stays in the template.
    template = first.template.card
    assert template.model.uuid is None
    assert "2026" not in (template.model.detail or "").split("---")[0]
    assert first.wire() == one  # and the first card did not take the second's values


def test_a_sealed_copy_keeps_the_template_and_a_changed_card_leaves_it(
    knowledge: Knowledge,
) -> None:
    (item,) = render_cards(knowledge, [Finding("infectious-period", ("Condition/c",))], CONTEXTS[1])
    assert isinstance(item, RenderedCard)
    # What Suppressions._seal does: another uuid, the rest shared.
    sealed = item.with_uuid("token")
    assert isinstance(sealed, RenderedCard) and sealed.template is item.template
    assert sealed.wire() == {**item.card.wire(), "uuid": "token"}
    assert item.template.card.wire(sealed.card) is not None
    # A card whose shared fields are not the template's any more is dumped as it is.
    changed = StaticCard(item.card.model_copy(update={"summary": "Changed"}), item.finding)
    assert item.template.card.wire(changed.card) is None
    assert changed.wire()["summary"] == "Changed"
    assert changed.wire() == changed.card.wire()


def test_only_the_cards_shown_are_made(
    knowledge: Knowledge, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    make = RenderedCard._make

    def counted(self: RenderedCard) -> Card:
        made.append(self.finding)
        return make(self)

    monkeypatch.setattr(RenderedCard, "_make", counted)
    findings = [
        Finding("notify-municipal-doctor", ("Condition/c",)),
        Finding("isolation-inpatient", ("Condition/c",)),
        Finding("contact-tracing", ("Condition/c",)),
        Finding("staff-in-vulnerable-groups", ("Condition/c",)),
        Finding("infectious-period", ("Condition/c",)),
    ]
    issued = render_cards(knowledge, findings, CONTEXTS[0], max_cards=2)
    assert made == []  # planned, folded and cut without making a card
    shown = [item.wire() for item in issued]
    assert [item.finding for item in issued] == made and len(made) == 2
    for item, wire in zip(issued, shown, strict=True):
        assert item.wire() == wire  # made once: the same uuids on every read
        assert item.card is item.card


def test_an_answer_may_be_changed_without_changing_the_next(knowledge: Knowledge) -> None:
    group = [Finding("droplet-precautions-outpatient", ("Condition/c",))]
    first = cards._issued(knowledge, group, CONTEXTS[0], "nb").wire()
    first["source"]["topic"]["code"] = "changed"
    first["links"][0]["url"] = "https://example.org/changed"
    first["overrideReasons"].clear()
    second = cards._issued(knowledge, group, CONTEXTS[0], "nb")
    assert second.wire()["source"]["topic"]["code"] == "droplet-precautions-outpatient"
    assert second.wire()["links"][0]["url"] != "https://example.org/changed"
    assert second.wire()["overrideReasons"]
    assert _bytes(second.wire()) == _bytes(second.card.wire())


def _with_summary(knowledge: Knowledge, key: str, text: str) -> Knowledge:
    content = knowledge.content
    finding = content.findings[key]
    summary = finding.summary.model_copy(update={"nb": text})
    changed = content.model_copy(
        update={
            "findings": {**content.findings, key: finding.model_copy(update={"summary": summary})}
        }
    )
    return Knowledge(content=changed, source=knowledge.source, valuesets=knowledge.valuesets)


def test_a_changed_content_is_never_answered_from_the_old_templates(
    knowledge: Knowledge,
) -> None:
    group = [Finding("contact-tracing", ("Condition/c",))]
    before = render_cards(knowledge, group, CONTEXTS[0])[0].card.summary
    changed = _with_summary(knowledge, "contact-tracing", "Smittesporing: ny tekst")
    assert render_cards(changed, group, CONTEXTS[0])[0].card.summary == "Smittesporing: ny tekst"
    assert render_cards(changed, group, CONTEXTS[0])[0].wire()["summary"] == (
        "Smittesporing: ny tekst"
    )
    # The old content keeps its own, and a content loaded again from the file makes its own.
    assert render_cards(knowledge, group, CONTEXTS[0])[0].card.summary == before
    reloaded = load_knowledge()
    assert reloaded.content is not knowledge.content
    assert render_cards(reloaded, group, CONTEXTS[0])[0].card.summary == before


def test_the_templates_of_a_content_go_with_it(knowledge: Knowledge) -> None:
    changed = _with_summary(knowledge, "contact-tracing", "Smittesporing: en gang")
    render_cards(changed, [Finding("contact-tracing", ())], CONTEXTS[1])
    key = id(changed.content)
    assert key in cards._TEMPLATES
    del changed
    gc.collect()
    assert key not in cards._TEMPLATES


def test_a_folded_card_is_made_from_the_template_of_its_whole_group(knowledge: Knowledge) -> None:
    findings = [
        Finding("notify-municipal-doctor", ("Condition/c",)),
        Finding("isolation-inpatient", ("Condition/c",)),
        Finding("contact-tracing", ("Condition/c",)),
        Finding("staff-in-vulnerable-groups", ("Condition/c",)),
    ]
    issued = render_cards(knowledge, findings, CONTEXTS[0], max_cards=3)
    host = next(item for item in issued if item.finding == "isolation-inpatient")
    assert isinstance(host, RenderedCard) and host.template is not None
    assert host.merged == ("staff-in-vulnerable-groups",)
    assert [f.key for f in host.group] == ["isolation-inpatient", "staff-in-vulnerable-groups"]
    fresh = _fresh_card(knowledge, host.group, CONTEXTS[0], "nb")
    assert _bytes(host.wire()) == _bytes(fresh.wire())


# --- WireTemplate on its own: the same JSON as wire() for whatever a filled field holds ------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
    | st.sampled_from(["null", "[]", "{}", "x"])
    | st.datetimes(timezones=st.just(dt.UTC))
    | st.dates(),
    lambda children: (
        st.lists(children, max_size=3)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=12,
)


def _action_template() -> WireTemplate[Action]:
    return WireTemplate(
        Action(type="create", description="Registrer", resource={"resourceType": "X"}),
        filled=("resource", "resourceId"),
    )


@settings(max_examples=300, deadline=None)
@given(resource=st.dictionaries(st.text(max_size=4), JSON, min_size=1, max_size=4))
def test_a_filled_field_is_on_the_wire_as_wire_puts_it(resource: dict[str, Any]) -> None:
    template = _action_template()
    action = template.fill(resource=resource)
    assert json.dumps(template.wire(action), default=str) == json.dumps(action.wire(), default=str)


@settings(max_examples=100, deadline=None)
@given(
    ids=st.none() | st.lists(st.text(max_size=4), max_size=3),
    uuid_=st.none() | st.text(max_size=4),
)
def test_filled_lists_and_texts_are_on_the_wire_as_wire_puts_them(
    ids: list[str] | None, uuid_: str | None
) -> None:
    action = _action_template()
    suggestion = WireTemplate(
        Suggestion(label="Registrer", uuid=None, isRecommended=True, actions=[action.model]),
        filled=("uuid", "actions"),
        items={"actions": action},
    )
    actions = [action.fill(resource={"a": [1, None]}, resourceId=ids)]
    filled = suggestion.fill(uuid=uuid_, actions=actions)
    assert json.dumps(suggestion.wire(filled)) == json.dumps(filled.wire())
    # An action not made from the template is dumped as it is.
    other = Action(type="delete", description="Slett", resourceId=["a"])
    mixed = suggestion.fill(uuid=uuid_, actions=[*actions, other])
    assert json.dumps(suggestion.wire(mixed)) == json.dumps(mixed.wire())


def test_a_template_fills_only_the_fields_it_names() -> None:
    template = _action_template()
    with pytest.raises(ValueError, match="description"):
        template.fill(description="other")
    with pytest.raises(ValueError, match="nonsense"):
        WireTemplate(template.model, filled=("nonsense",))
    assert template.wire(Suggestion(label="x")) is None  # another model is not its own
