"""The seven CDS services of the m-kopper guideline, one per hook.

Each service declares prefetch templates asking only for what its rules read, filtered on the
FHIR server where search allows:

- ``conditions``: the patient's Conditions *without* a code or status filter. Norwegian records
  often carry m-kopper as text only, and a text-only Condition cannot be found by code search;
  the service filters by code and text itself (cheap: raw dicts, before validation). Every
  clinical status is asked for: a resolved or refuted m-kopper Condition rules out an older
  positive result, so a chart fetched by the service must hold it as a prefetch would; a
  Condition without clinicalStatus (R4 allows this outside the problem list) is found too.
- ``observations``: Observations with the LOINC codes of ``mkopper-laboratory-tests``.
- ``encounter``: the hook's Encounter (care setting).
- ``aerosolOrders``: active ServiceRequests with aerosol-generating procedure codes.
- ``testOrders``: active ServiceRequests for an m-kopper test (the chart view shows sampling,
  guideline section 6, while the test is ordered).
- ``aerosolProcedures``: Procedures with the same aerosol-generating codes; one in progress or
  ended within ``matching.aerosol_procedure_recent_hours`` calls for the respirator (5.2).
- ``notifications``: completed Communications with the notification card's own category; one
  sent within ``matching.notification_lookback_days`` means kommunelegen was notified (8).

``conditions`` and ``observations`` are required where the answer depends on the m-kopper
status: without them no answer is safe (412). The encounter is optional: an unknown setting
still gets the precautions that hold in every setting.

The order hooks look at the draft orders only (not at earlier orders), so a respirator card is
shown when an aerosol-generating procedure is being ordered, not on every unrelated order.
order-select reads the orders just selected (``context.selections``, references into
``draftOrders``): selecting paracetamol beside a drafted bronchoscopy shows no respirator card
again. The m-kopper status still reads every draft order. order-sign reads every draft order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from cds_hooks.cards import CapFitter, RenderContext, render_cards
from cds_hooks.errors import ContentError, DataUnavailable, InvalidRequest
from cds_hooks.facts import (
    NOTIFICATION_CATEGORY,
    Facts,
    Sources,
    Status,
    aerosol_search_codes,
    condition_reader,
    derive_facts,
)
from cds_hooks.knowledge import LANGUAGES, Knowledge, Language, load_knowledge
from cds_hooks.models import HookRequest
from cds_hooks.prefetch import resources_of
from cds_hooks.rules import (
    CLEANING_AFTER_CONSULTATION,
    CONTACT_TRACING,
    DROPLET_PRECAUTIONS,
    DROPLET_PRECAUTIONS_OUTPATIENT,
    FINDINGS,
    INFECTIOUS_PERIOD,
    ISOLATION_INPATIENT,
    NOTIFY_MUNICIPAL_DOCTOR,
    PLAN_OUTPATIENT_CONSULTATION,
    RESPIRATOR,
    SAMPLING_BY_AGREEMENT,
    STAFF_IN_VULNERABLE_GROUPS,
    VARIANTS,
    evaluate_rules,
)
from cds_hooks.services import CdsService, Evaluation, PrefetchData, ServiceRegistry

CONDITIONS = "conditions"
OBSERVATIONS = "observations"
ENCOUNTER = "encounter"
AEROSOL_ORDERS = "aerosolOrders"
TEST_ORDERS = "testOrders"
AEROSOL_PROCEDURES = "aerosolProcedures"
NOTIFICATIONS = "notifications"

STATUS_KEYS = frozenset({CONDITIONS, OBSERVATIONS})

_SETTING_REGIME = frozenset(
    {
        ISOLATION_INPATIENT,
        DROPLET_PRECAUTIONS_OUTPATIENT,
        DROPLET_PRECAUTIONS,
        CLEANING_AFTER_CONSULTATION,
    }
)
# The chart hooks: the regime, the respirator, staff in vulnerable groups, and contact tracing
# once the case is confirmed (9: "så snart som mulig etter påvisning av bekreftet tilfelle").
_CHART = _SETTING_REGIME | {RESPIRATOR, STAFF_IN_VULNERABLE_GROUPS, CONTACT_TRACING}
# Opening the chart of a suspected or confirmed case also reminds of the duty to notify (8):
# it is the one moment every EHR offers (the SMART page runs patient-view), and an override
# "allerede varslet kommunelegen" keeps the card away for the time the content sets. For a
# deployment with patient-view only, the infectious period (3) is there too, and sampling (6)
# while an m-kopper test is ordered.
_CHART_VIEW = _CHART | {NOTIFY_MUNICIPAL_DOCTOR, INFECTIOUS_PERIOD}

# Which findings answer which moment.
Wanted = Callable[[Facts], Collection[str]]


def _fixed(keys: Collection[str]) -> Wanted:
    return lambda _facts: keys


def _chart_view(facts: Facts) -> Collection[str]:
    return _CHART_VIEW | {SAMPLING_BY_AGREEMENT} if facts.mkopper_test_ordered else _CHART_VIEW


def _order_findings(facts: Facts) -> Collection[str]:
    if facts.mkopper_test_ordered:
        return {RESPIRATOR, SAMPLING_BY_AGREEMENT, NOTIFY_MUNICIPAL_DOCTOR}
    return {RESPIRATOR}


def _diagnosis_recorded(facts: Facts) -> Collection[str]:
    """Recording the diagnosis: notify (8) and the regime; a suspicion is the moment for
    sampling by agreement (6), a confirmation the moment for contact tracing (9)."""
    wanted = _SETTING_REGIME | {NOTIFY_MUNICIPAL_DOCTOR}
    if facts.status is Status.CONFIRMED:
        return wanted | {CONTACT_TRACING}
    return wanted | {SAMPLING_BY_AGREEMENT}


def _templates(knowledge: Knowledge) -> dict[str, str]:
    lab = knowledge.valueset("mkopper-laboratory-tests")
    lab_codes = ",".join(f"{system}|{code}" for system, code in sorted(lab.codes))
    aerosol_codes = ",".join(f"{system}|{code}" for system, code in aerosol_search_codes(knowledge))
    category = f"{knowledge.codesystem_url('card-topic')}|{NOTIFICATION_CATEGORY}"
    return {
        # No code filter: a Condition recorded as text only cannot be found by code. No status
        # filter: a resolved or refuted Condition rules a case out. Large pages keep a long
        # problem list within CDS_FHIR_MAX_PAGES.
        CONDITIONS: "Condition?patient={{context.patientId}}&_count=1000",
        OBSERVATIONS: "Observation?patient={{context.patientId}}&code=" + lab_codes,
        ENCOUNTER: "Encounter/{{context.encounterId}}",
        AEROSOL_ORDERS: "ServiceRequest?patient={{context.patientId}}&status=active&code="
        + aerosol_codes,
        TEST_ORDERS: "ServiceRequest?patient={{context.patientId}}&status=active&code=" + lab_codes,
        # Under way, or ended (the window is applied to the performed time by the service).
        AEROSOL_PROCEDURES: "Procedure?patient={{context.patientId}}"
        "&status=preparation,in-progress,completed,stopped&code=" + aerosol_codes,
        NOTIFICATIONS: "Communication?patient={{context.patientId}}&status=completed"
        "&category=" + category,
    }


def _context_bundle(request: HookRequest, name: str) -> list[dict[str, Any]] | None:
    if name not in request.context:
        return None
    found = resources_of(request.context[name])
    if found is None:
        raise InvalidRequest(
            "The hook context is not valid.",
            details=[{"path": f"context.{name}", "problem": "must be a FHIR Bundle"}],
        )
    return found


def _selections(request: HookRequest) -> frozenset[str]:
    """order-select's ``context.selections``: references ("ServiceRequest/123") to resources
    in ``draftOrders``."""
    if "selections" not in request.context:
        raise InvalidRequest(
            "The hook context is incomplete.",
            details=[{"path": "context.selections", "problem": "required"}],
        )
    value = request.context["selections"]
    if not isinstance(value, list) or not all(
        isinstance(item, str) and "/" in item for item in value
    ):
        raise InvalidRequest(
            "The hook context is not valid.",
            details=[
                {
                    "path": "context.selections",
                    "problem": "must be a list of references such as 'ServiceRequest/123'",
                }
            ],
        )
    return frozenset(value)


def _joined(data: PrefetchData, keys: Collection[str]) -> list[dict[str, Any]] | None:
    """The resources of several keys together; None when none of them is known."""
    found = [data.get(key) for key in keys]
    known = [resources for resources in found if resources is not None]
    return [resource for resources in known for resource in resources] if known else None


def _required(data: PrefetchData, keys: Collection[str]) -> None:
    for key in sorted(keys):
        if data.get(key) is None:
            raise DataUnavailable(f"Prefetch '{key}' is not available.")


class _Evaluator:
    """The evaluate function of one service (a callable object, so it is easy to inspect)."""

    def __init__(
        self,
        knowledge: Knowledge,
        *,
        wanted: Wanted,
        required: Collection[str],
        orders_from: str | tuple[str, ...] | None,
        conditions_from_context: bool = False,
        selections: bool = False,
        language: Language,
        max_cards: int | None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.knowledge = knowledge
        self.clock = clock
        self.wanted = wanted
        self.required = frozenset(required)
        self.orders_from = orders_from
        self.conditions_from_context = conditions_from_context
        self.selections = selections
        self.language: Language = language
        self.max_cards = max_cards
        self.fit = CapFitter(knowledge)

    def __call__(self, request: HookRequest, data: PrefetchData) -> Evaluation:
        _required(data, self.required)
        context = request.context
        encounter_id = context.get("encounterId")
        encounter_id = encounter_id if isinstance(encounter_id, str) and encounter_id else None
        if self.orders_from == "draftOrders":
            orders = _context_bundle(request, "draftOrders")
        elif isinstance(self.orders_from, tuple):
            orders = _joined(data, self.orders_from)
        elif self.orders_from is not None:
            orders = data.get(self.orders_from)
        else:
            orders = None
        selected = _selections(request) if self.selections else None
        if self.conditions_from_context:
            conditions = _context_bundle(request, "conditions")
            observations = None
        else:
            conditions = data.get(CONDITIONS)
            observations = data.get(OBSERVATIONS)
        now = self.clock() if self.clock is not None else None
        user_id = context.get("userId")
        sources = Sources(
            conditions=conditions,
            observations=observations,
            encounters=data.get(ENCOUNTER),
            encounter_id=encounter_id,
            orders=orders,
            selected=selected,
            procedures=data.get(AEROSOL_PROCEDURES),
            notifications=data.get(NOTIFICATIONS),
            now=now,
        )
        facts = derive_facts(self.knowledge, sources, only_if_active=True)
        if not facts.active:
            return Evaluation([], skipped=facts.skipped, read_leniently=facts.read_leniently)
        findings = evaluate_rules(facts, self.wanted(facts))
        render_context = RenderContext(
            patient_id=str(context.get("patientId")),
            encounter_id=encounter_id,
            user_id=user_id if isinstance(user_id, str) else None,
            now=now,
        )
        issued = render_cards(
            self.knowledge, findings, render_context, language=self.language, max_cards=None
        )
        if self.max_cards is not None:
            issued = self.fit(issued, self.max_cards).issued
        return Evaluation(
            issued,
            status=facts.status.label,
            skipped=facts.skipped,
            read_leniently=facts.read_leniently,
        )


def _check_coverage(knowledge: Knowledge, service_ids: Collection[str]) -> None:
    content = knowledge.content
    problems = [f"findings.{key}: missing" for key in sorted(FINDINGS - set(content.findings))]
    problems += [
        f"findings.{key}: no rule gives this finding"
        for key in sorted(set(content.findings) - FINDINGS)
    ]
    known, texts = set(service_ids), set(content.services)
    problems += [f"services.{sid}: missing" for sid in sorted(known - texts)]
    problems += [f"services.{sid}: no such service" for sid in sorted(texts - known)]
    for key in sorted(set(content.findings)):
        expected, have = VARIANTS.get(key, frozenset()), set(content.findings[key].variants)
        problems += [f"findings.{key}.variants.{v}: missing" for v in sorted(expected - have)]
        problems += [
            f"findings.{key}.variants.{v}: no rule gives it" for v in sorted(have - expected)
        ]
    if problems:
        raise ContentError(f"{knowledge.source}: {'; '.join(problems)}")


@dataclass(frozen=True, slots=True)
class Declaration:
    """One service as data: its hook, the prefetch keys it asks for, the findings it may show,
    and where its orders and conditions come from."""

    id: str
    hook: str
    prefetch: tuple[str, ...]
    wanted: Wanted
    required_context: tuple[str, ...]
    required: Collection[str] = STATUS_KEYS
    orders_from: str | tuple[str, ...] | None = None
    conditions_from_context: bool = False
    # order-select: read the aerosol procedure and the test from the selected orders only.
    selections: bool = False


_CHART_KEYS = (CONDITIONS, OBSERVATIONS, ENCOUNTER, AEROSOL_ORDERS, AEROSOL_PROCEDURES)
_STATUS_KEYS = (CONDITIONS, OBSERVATIONS)

SERVICES: tuple[Declaration, ...] = (
    Declaration(
        "mkopper-patient-view",
        "patient-view",
        (*_CHART_KEYS, TEST_ORDERS, NOTIFICATIONS),
        wanted=_chart_view,
        required_context=("patientId",),
        orders_from=(AEROSOL_ORDERS, TEST_ORDERS),
    ),
    Declaration(
        "mkopper-encounter-start",
        "encounter-start",
        _CHART_KEYS,
        wanted=_fixed(_CHART),
        required_context=("patientId", "encounterId"),
        orders_from=AEROSOL_ORDERS,
    ),
    Declaration(
        "mkopper-appointment-book",
        "appointment-book",
        _STATUS_KEYS,
        wanted=_fixed({PLAN_OUTPATIENT_CONSULTATION, STAFF_IN_VULNERABLE_GROUPS}),
        required_context=("patientId", "appointments"),
    ),
    *(
        Declaration(
            f"mkopper-{hook}",
            hook,
            (*_STATUS_KEYS, NOTIFICATIONS),
            wanted=_order_findings,
            required_context=("patientId", "draftOrders"),
            orders_from="draftOrders",
            # order-select is about the orders just selected; order-sign about every draft.
            selections=hook == "order-select",
        )
        for hook in ("order-select", "order-sign")
    ),
    Declaration(
        "mkopper-encounter-discharge",
        "encounter-discharge",
        _STATUS_KEYS,
        wanted=_fixed({INFECTIOUS_PERIOD, CONTACT_TRACING}),
        required_context=("patientId", "encounterId"),
    ),
    Declaration(
        "mkopper-problem-list-item-create",
        "problem-list-item-create",
        (ENCOUNTER, NOTIFICATIONS),
        wanted=_diagnosis_recorded,
        required_context=("patientId", "conditions"),
        required=(),
        conditions_from_context=True,
    ),
)
SERVICE_IDS = tuple(declaration.id for declaration in SERVICES)


def build_registry(
    knowledge: Knowledge,
    *,
    language: str = "nb",
    max_cards: int | None = 3,
    clock: Callable[[], dt.datetime] | None = None,
) -> ServiceRegistry:
    """The seven services, with titles and descriptions from the content file.

    ``max_cards=None`` leaves every card in the evaluation, most urgent first, for a caller
    that cuts the list itself after removing suppressed cards. ``clock`` is the call's time,
    from which the laboratory lookback window is counted (None: no window).
    """
    if language not in get_args(Language):
        raise ValueError(f"unsupported card language {language!r} (nb or en)")
    if max_cards is not None and max_cards < 1:
        raise ValueError("max_cards must be at least 1")
    lang: Language = "nb" if language == "nb" else "en"
    _check_coverage(knowledge, SERVICE_IDS)
    templates = _templates(knowledge)
    return ServiceRegistry(
        [_service(knowledge, d, templates, lang, max_cards, clock) for d in SERVICES]
    )


def _service(
    knowledge: Knowledge,
    declaration: Declaration,
    templates: dict[str, str],
    lang: Language,
    max_cards: int | None,
    clock: Callable[[], dt.datetime] | None = None,
) -> CdsService:
    text = knowledge.content.services[declaration.id]
    evaluate = _Evaluator(
        knowledge,
        wanted=declaration.wanted,
        required=declaration.required,
        orders_from=declaration.orders_from,
        conditions_from_context=declaration.conditions_from_context,
        selections=declaration.selections,
        language=lang,
        max_cards=max_cards,
        clock=clock,
    )
    return CdsService(
        id=declaration.id,
        hook=declaration.hook,
        title=text.title.get(lang),
        description=text.description.get(lang),
        prefetch={key: templates[key] for key in declaration.prefetch},
        evaluate=evaluate,
        required_prefetch=frozenset(declaration.required),
        required_context=declaration.required_context,
        fit=evaluate.fit,
        reads_condition=condition_reader(knowledge),
    )


def check_content(path: str | Path | None = None) -> str:
    """Validate a content file as the service would at start: load it with the ValueSets and
    build every service in every language; a one-line summary when valid."""
    knowledge = load_knowledge(path)
    for language in LANGUAGES:
        build_registry(knowledge, language=language)
    content = knowledge.content
    return (
        f"{knowledge.source}: valid ({len(content.findings)} findings, "
        f"{len(content.services)} services, {len(content.links)} links, "
        f"{len(knowledge.valuesets)} ValueSets)"
    )
