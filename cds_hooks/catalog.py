"""The seven CDS services of the m-kopper guideline, one per hook.

Each service declares prefetch templates asking only for what its rules read, filtered on the
FHIR server where search allows:

- ``conditions``: the patient's active Conditions *without* a code filter. Norwegian records often
  carry m-kopper as text only, and a text-only Condition cannot be found by code search; the
  service filters by code and text itself (cheap: raw dicts, before validation). The search
  asks for clinical-status active, recurrence or relapse; a Condition without clinicalStatus
  (R4 allows this outside the problem list) is only seen when the EHR sends it in prefetch.
- ``observations``: Observations with the LOINC codes of ``mkopper-laboratory-tests``.
- ``encounter``: the hook's Encounter (care setting).
- ``aerosolOrders``: active ServiceRequests with aerosol-generating procedure codes.

``conditions`` and ``observations`` are required where the answer depends on the m-kopper
status: without them no answer is safe (412). The encounter is optional: an unknown setting
still gets the precautions that hold in every setting.

The order hooks look at the draft orders only (not at earlier orders), so a respirator card is
shown when an aerosol-generating procedure is being ordered, not on every unrelated order.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from cds_hooks.cards import RenderContext, render_cards
from cds_hooks.errors import ContentError, DataUnavailable, InvalidRequest
from cds_hooks.facts import Facts, Sources, aerosol_search_codes, derive_facts
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
    evaluate_rules,
)
from cds_hooks.services import CdsService, Evaluation, PrefetchData, ServiceRegistry

CONDITIONS = "conditions"
OBSERVATIONS = "observations"
ENCOUNTER = "encounter"
AEROSOL_ORDERS = "aerosolOrders"

STATUS_KEYS = frozenset({CONDITIONS, OBSERVATIONS})

_SETTING_REGIME = frozenset(
    {
        ISOLATION_INPATIENT,
        DROPLET_PRECAUTIONS_OUTPATIENT,
        DROPLET_PRECAUTIONS,
        CLEANING_AFTER_CONSULTATION,
    }
)
_CHART = _SETTING_REGIME | {RESPIRATOR, STAFF_IN_VULNERABLE_GROUPS}
# Opening the chart of a suspected or confirmed case also reminds of the duty to notify (8):
# it is the one moment every EHR offers (the SMART page runs patient-view), and an override
# "allerede varslet kommunelegen" keeps the card away for the time the content sets.
_CHART_VIEW = _CHART | {NOTIFY_MUNICIPAL_DOCTOR}

# Which findings answer which moment.
Wanted = Callable[[Facts], Collection[str]]


def _fixed(keys: Collection[str]) -> Wanted:
    return lambda _facts: keys


def _order_findings(facts: Facts) -> Collection[str]:
    if facts.mkopper_test_ordered:
        return {RESPIRATOR, SAMPLING_BY_AGREEMENT, NOTIFY_MUNICIPAL_DOCTOR}
    return {RESPIRATOR}


def _templates(knowledge: Knowledge) -> dict[str, str]:
    lab = knowledge.valueset("mkopper-laboratory-tests")
    lab_codes = ",".join(f"{system}|{code}" for system, code in sorted(lab.codes))
    aerosol_codes = ",".join(f"{system}|{code}" for system, code in aerosol_search_codes(knowledge))
    return {
        # No code filter: a Condition recorded as text only cannot be found by code. Large
        # pages keep a long problem list within CDS_FHIR_MAX_PAGES.
        CONDITIONS: "Condition?patient={{context.patientId}}"
        "&clinical-status=active,recurrence,relapse&_count=1000",
        OBSERVATIONS: "Observation?patient={{context.patientId}}&code=" + lab_codes,
        ENCOUNTER: "Encounter/{{context.encounterId}}",
        AEROSOL_ORDERS: "ServiceRequest?patient={{context.patientId}}&status=active&code="
        + aerosol_codes,
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
        orders_from: str | None,
        conditions_from_context: bool = False,
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
        self.language: Language = language
        self.max_cards = max_cards

    def __call__(self, request: HookRequest, data: PrefetchData) -> Evaluation:
        _required(data, self.required)
        context = request.context
        encounter_id = context.get("encounterId")
        encounter_id = encounter_id if isinstance(encounter_id, str) and encounter_id else None
        if self.orders_from == "draftOrders":
            orders = _context_bundle(request, "draftOrders")
        elif self.orders_from is not None:
            orders = data.get(self.orders_from)
        else:
            orders = None
        if self.conditions_from_context:
            conditions = _context_bundle(request, "conditions")
            observations = None
        else:
            conditions = data.get(CONDITIONS)
            observations = data.get(OBSERVATIONS)
        sources = Sources(
            conditions=conditions,
            observations=observations,
            encounters=data.get(ENCOUNTER),
            encounter_id=encounter_id,
            orders=orders,
            now=self.clock() if self.clock is not None else None,
        )
        facts = derive_facts(self.knowledge, sources)
        if not facts.active:
            return Evaluation([], skipped=facts.skipped, read_leniently=facts.read_leniently)
        findings = evaluate_rules(facts, self.wanted(facts))
        render_context = RenderContext(
            patient_id=str(context.get("patientId")), encounter_id=encounter_id
        )
        issued = render_cards(
            self.knowledge,
            findings,
            render_context,
            language=self.language,
            max_cards=self.max_cards,
        )
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
    orders_from: str | None = None
    conditions_from_context: bool = False


_CHART_KEYS = (CONDITIONS, OBSERVATIONS, ENCOUNTER, AEROSOL_ORDERS)
_STATUS_KEYS = (CONDITIONS, OBSERVATIONS)

SERVICES: tuple[Declaration, ...] = (
    Declaration(
        "mkopper-patient-view",
        "patient-view",
        _CHART_KEYS,
        wanted=_fixed(_CHART_VIEW),
        required_context=("patientId",),
        orders_from=AEROSOL_ORDERS,
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
            _STATUS_KEYS,
            wanted=_order_findings,
            required_context=("patientId", "draftOrders"),
            orders_from="draftOrders",
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
        (ENCOUNTER,),
        wanted=_fixed(_SETTING_REGIME | {NOTIFY_MUNICIPAL_DOCTOR}),
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
    return CdsService(
        id=declaration.id,
        hook=declaration.hook,
        title=text.title.get(lang),
        description=text.description.get(lang),
        prefetch={key: templates[key] for key in declaration.prefetch},
        evaluate=_Evaluator(
            knowledge,
            wanted=declaration.wanted,
            required=declaration.required,
            orders_from=declaration.orders_from,
            conditions_from_context=declaration.conditions_from_context,
            language=lang,
            max_cards=max_cards,
            clock=clock,
        ),
        required_prefetch=frozenset(declaration.required),
        required_context=declaration.required_context,
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
