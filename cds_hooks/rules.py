"""Rules: one pure function per guideline recommendation, named like the guideline.

Each rule reads :class:`~cds_hooks.facts.Facts` and returns a :class:`Finding` (a kebab-case key
and the evidence behind it) or ``None``. Unknown data never counts as "no": a patient whose care
setting is unknown still gets the droplet precautions that apply in every setting.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, replace

from cds_hooks.facts import Basis, CareSetting, Facts, Status

NOTIFY_MUNICIPAL_DOCTOR = "notify-municipal-doctor"
ISOLATION_INPATIENT = "isolation-inpatient"
RESPIRATOR = "respirator"
DROPLET_PRECAUTIONS_OUTPATIENT = "droplet-precautions-outpatient"
DROPLET_PRECAUTIONS = "droplet-precautions"
PLAN_OUTPATIENT_CONSULTATION = "plan-outpatient-consultation"
SAMPLING_BY_AGREEMENT = "sampling-by-agreement"
CONTACT_TRACING = "contact-tracing"
STAFF_IN_VULNERABLE_GROUPS = "staff-in-vulnerable-groups"
CLEANING_AFTER_CONSULTATION = "cleaning-after-consultation"
INFECTIOUS_PERIOD = "infectious-period"

_OUTPATIENT_RULES = frozenset({CareSetting.OUTPATIENT, CareSetting.EMERGENCY})


@dataclass(frozen=True, slots=True)
class Finding:
    key: str
    evidence: tuple[str, ...] = ()
    basis: Basis | None = None  # what the status rests on, by kind and date (for the card)
    # The content's words for one setting (``findings.<key>.variants.<variant>``), if any.
    variant: str | None = None


Rule = Callable[[Facts], Finding | None]


def infectious_period(facts: Facts) -> Finding | None:
    """3: infectious from symptom onset until the scabs have fallen off."""
    return Finding(INFECTIOUS_PERIOD, facts.status_evidence) if facts.active else None


def droplet_precautions_outpatient(facts: Facts) -> Finding | None:
    """5.1: PPE under droplet precautions in the outpatient clinic (emergency rooms alike)."""
    if facts.active and facts.care_setting in _OUTPATIENT_RULES:
        return Finding(
            DROPLET_PRECAUTIONS_OUTPATIENT, facts.status_evidence + facts.care_setting_evidence
        )
    return None


def plan_outpatient_consultation(facts: Facts) -> Finding | None:
    """5.1: plan the consultation in advance, a suitable room, no waiting room."""
    return Finding(PLAN_OUTPATIENT_CONSULTATION, facts.status_evidence) if facts.active else None


def cleaning_after_consultation(facts: Facts) -> Finding | None:
    """5.1: disinfect touch points in the examination room after the consultation."""
    if facts.active and facts.care_setting in _OUTPATIENT_RULES:
        return Finding(
            CLEANING_AFTER_CONSULTATION, facts.status_evidence + facts.care_setting_evidence
        )
    return None


def isolation_inpatient(facts: Facts) -> Finding | None:
    """5.2: the inpatient is isolated under droplet precautions."""
    if facts.active and facts.care_setting is CareSetting.INPATIENT:
        return Finding(ISOLATION_INPATIENT, facts.status_evidence + facts.care_setting_evidence)
    return None


# Settings whose words differ from the card's own: an ambulance (prolonged close contact, so a
# respirator instead of a surgical mask) and a home visit (no examination or waiting room).
_SETTING_VARIANTS = {CareSetting.FIELD: "field", CareSetting.HOME: "home"}
# The variants each finding's content must have (checked when the services are built).
VARIANTS: dict[str, frozenset[str]] = {DROPLET_PRECAUTIONS: frozenset(_SETTING_VARIANTS.values())}


def droplet_precautions_any_setting(facts: Facts) -> Finding | None:
    """5.1 and 5.2 agree on the PPE: used when the setting is unknown, in the field (with a
    respirator, 5.2) and on a home visit (without the clinic's rooms)."""
    settings = (CareSetting.UNKNOWN, CareSetting.FIELD, CareSetting.HOME)
    if facts.active and facts.care_setting in settings:
        return Finding(
            DROPLET_PRECAUTIONS,
            facts.status_evidence + facts.care_setting_evidence,
            variant=_SETTING_VARIANTS.get(facts.care_setting),
        )
    return None


def respirator_when_aerosol_or_respiratory(facts: Facts) -> Finding | None:
    """5.2: respirator for aerosol-generating procedures (ordered, in progress or recently
    performed) and marked respiratory symptoms. Prolonged or close contact in an ambulance
    is advised on the setting card itself, so the ambulance alone gives no second card."""
    if not facts.active:
        return None
    if facts.aerosol_procedure_ordered or facts.aerosol_procedure_performed:
        evidence = facts.aerosol_procedure_evidence + facts.aerosol_procedure_performed_evidence
        return Finding(RESPIRATOR, facts.status_evidence + evidence)
    if facts.respiratory_symptoms:
        return Finding(RESPIRATOR, facts.status_evidence + facts.care_setting_evidence)
    return None


def sampling_by_agreement(facts: Facts) -> Finding | None:
    """6: diagnostics by agreement with the Department of Microbiology: when an m-kopper test
    is ordered, and when a suspected case is recorded (the sample is still to be taken).
    Which moments show it is the service's choice."""
    if facts.mkopper_test_ordered:
        return Finding(SAMPLING_BY_AGREEMENT, facts.mkopper_test_evidence)
    if facts.status is Status.SUSPECTED:
        return Finding(SAMPLING_BY_AGREEMENT, facts.status_evidence)
    return None


def staff_in_vulnerable_groups(facts: Facts) -> Finding | None:
    """7: pregnant staff avoid the patient; immunosuppressed staff assessed individually.
    Not for a virtual contact, where no one is near the patient."""
    if facts.active and facts.care_setting is not CareSetting.VIRTUAL:
        return Finding(STAFF_IN_VULNERABLE_GROUPS, facts.status_evidence)
    return None


def notify_municipal_doctor(facts: Facts) -> Finding | None:
    """8: suspected and confirmed cases are notified at once by telephone to kommunelegen;
    not again when the record already holds the notification."""
    if facts.active and not facts.notification_recorded:
        return Finding(NOTIFY_MUNICIPAL_DOCTOR, facts.status_evidence)
    return None


def contact_tracing(facts: Facts) -> Finding | None:
    """9 (with the incubation period, 4): trace contacts of a confirmed case."""
    if facts.status is Status.CONFIRMED:
        return Finding(CONTACT_TRACING, facts.status_evidence)
    return None


RULES: tuple[Rule, ...] = (
    infectious_period,
    droplet_precautions_outpatient,
    plan_outpatient_consultation,
    cleaning_after_consultation,
    isolation_inpatient,
    droplet_precautions_any_setting,
    respirator_when_aerosol_or_respiratory,
    sampling_by_agreement,
    staff_in_vulnerable_groups,
    notify_municipal_doctor,
    contact_tracing,
)

FINDINGS: frozenset[str] = frozenset(
    {
        NOTIFY_MUNICIPAL_DOCTOR,
        ISOLATION_INPATIENT,
        RESPIRATOR,
        DROPLET_PRECAUTIONS_OUTPATIENT,
        DROPLET_PRECAUTIONS,
        PLAN_OUTPATIENT_CONSULTATION,
        SAMPLING_BY_AGREEMENT,
        CONTACT_TRACING,
        STAFF_IN_VULNERABLE_GROUPS,
        CLEANING_AFTER_CONSULTATION,
        INFECTIOUS_PERIOD,
    }
)


def evaluate_rules(facts: Facts, wanted: Collection[str] | None = None) -> list[Finding]:
    """Every finding the rules give for these facts, limited to ``wanted`` keys if given."""
    findings = [
        replace(finding, basis=facts.basis)
        for rule in RULES
        if (finding := rule(facts)) is not None
    ]
    if wanted is not None:
        findings = [finding for finding in findings if finding.key in wanted]
    return findings
