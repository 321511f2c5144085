"""Facts: the small frozen value the rules read, derived from raw FHIR resources.

Decisions (each follows TERMINOLOGY.md where it speaks):

- **Status** none / suspected / confirmed. A Condition counts when its code is in the
  ``mkopper-diagnosis`` ValueSet, is a local ICD-10 subdivision of such a code (``B04.x``,
  ``B040``) in an ICD-10 system, a local ``icd`` system or no system, or when its text or a
  coding's display names m-kopper (``TEXT_PATTERN``; never bare "kopper" or "vannkopper").
  verificationStatus ``confirmed`` confirms; ``unconfirmed``/``provisional``/``differential``
  and an absent status mean suspected (never confirmed); ``refuted``/``entered-in-error`` mean
  none. clinicalStatus ``inactive``/``remission``/``resolved`` mean none; an absent
  clinicalStatus counts as active unless the Condition has an abatement.
- **Laboratory**: results of tests in ``mkopper-laboratory-tests`` are ordered by effective time
  (``effective[x]``, else ``issued``; an undated result sorts first, a positive result wins a
  tie). The latest result decides what the laboratory says: positive confirms; a negative result
  after a positive one withdraws the laboratory confirmation. It never withdraws a clinician's
  Condition: a Condition that is still active and not refuted keeps its status.
- **An m-kopper test in the orders** means the clinician suspects m-kopper: status is at least
  suspected (the duty to notify applies "already at suspicion", guideline section 8).
- **Care setting** from the Encounter's class (R4: one Coding; R5: a list of CodeableConcepts)
  and Volven 8406 omsorgsnivå in class or type; when several disagree the most demanding wins.
  A home visit (HH) has the outpatient precautions but its own words: no examination room, no
  waiting room.
- **Aerosol-generating procedures**: ordered (an active ServiceRequest, or a draft order the
  clinician just selected), in progress (a Procedure in preparation or in progress), or
  performed recently (a completed or stopped Procedure that ended within
  ``aerosol_procedure_recent_hours`` of the call's clock; without a clock, only one in
  progress counts).
- **Notification recorded**: a completed Communication carrying the notification card's own
  category (the card-topic code ``notify-municipal-doctor``), sent within
  ``notification_lookback_days`` of the call's clock.
- **Respiratory symptoms**: TERMINOLOGY.md verifies no code for them, so they stay unknown.
- Missing data is unknown (``None`` / ``UNKNOWN``), never "no". Raw dicts are filtered by code
  before model validation; a malformed resource is skipped and counted, never a crash.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from functools import lru_cache, partial
from typing import Any

from cds_hooks.fhir import InvalidResource, check_resource
from cds_hooks.knowledge import Knowledge, Matching, ValueSetCodes

VER_STATUS = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CLINICAL_STATUS = "http://terminology.hl7.org/CodeSystem/condition-clinical"

# Free-text names of m-kopper (TERMINOLOGY.md): mpox, m-kopper (any hyphen), apekopp*,
# monkeypox, MPXV. The left boundary keeps "vannkopper" and bare "kopper" out.
TEXT_PATTERN = re.compile(r"(?<!\w)(?:mpox|m[- ]?kopp[ae]r|apekopp|monkeypox|mpxv)")
# Every dash people type (hyphen, non-breaking hyphen, figure/en/em dash, minus) reads as "-";
# soft hyphens vanish.
_DASHES: dict[int, str | None] = dict.fromkeys(
    map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d"), "-"
)
_DASHES[0xAD] = None
_WORD = re.compile(r"[^\W_]+(?:-[^\W_]+)*")
# A comma ends it too: "Mistenkt mpox, negativ for HSV" is a suspected case.
_SCOPE_END = re.compile(r"[.,;:!?()\n]|\b(?:men|but|og|and)\b")


def normalise_text(text: str) -> str:
    """Text as it is matched: NFKC, every dash a hyphen, no soft hyphen, lower case."""
    return unicodedata.normalize("NFKC", text).translate(_DASHES).casefold()


def _is_trigger(word: str, triggers: Iterable[str]) -> bool:
    return any(word.startswith(t[:-1]) if t.endswith("*") else word == t for t in triggers)


def text_names_mkopper(matching: Matching, text: str) -> bool:
    """Free text names m-kopper, and no negation trigger stands near the name (NegEx-style).

    "Mistenkt M–kopper" (en dash) and "m kopper" are names; "Mpox utelukket", "ikke mpox",
    "vaksine mot mpox" are not cases; bare "kopper" and "vannkopper" never match.
    """
    return _mention(matching, text) is True


def _mention(matching: Matching, text: str) -> bool | None:
    """``True``: the text names m-kopper; ``False``: it names it only to rule it out;
    ``None``: it does not name it."""
    normal = normalise_text(text)
    negated = False
    window = matching.negation_window_words
    for found in TEXT_PATTERN.finditer(normal):
        # A trigger's scope ends at a sentence or clause boundary ("Ikke feber. Mpox?").
        before_text = _SCOPE_END.split(normal[: found.start()])[-1]
        after_text = _SCOPE_END.split(normal[found.end() :])[0]
        before = _WORD.findall(before_text)[-window:]
        # The rest of the name's own word ("mpox-vaksinert") counts as the first word after it.
        tail = re.match(r"[^\W_]*(?:-([^\W_]+))?", after_text)
        glued = [tail.group(1)] if tail and tail.group(1) else []
        after = glued + _WORD.findall(after_text[tail.end() if tail else 0 :])[:window]
        words_before = [w for word in before for w in word.split("-")]
        if _is_trigger_any(words_before, matching.negation_before) or _is_trigger_any(
            after, matching.negation_after
        ):
            negated = True
            continue
        return True
    return False if negated else None


def _is_trigger_any(words: Iterable[str], triggers: Iterable[str]) -> bool:
    triggers = tuple(triggers)
    return any(_is_trigger(word, triggers) for word in words)


_ICD_SUBDIVISION = re.compile(r"^([A-Z]\d\d)(?:\.?(?:\d{1,2}|X))?$")

_SUSPECTED = frozenset({"unconfirmed", "provisional", "differential"})
_NOT_MKOPPER = frozenset({"refuted", "entered-in-error"})
_ACTIVE = frozenset({"active", "recurrence", "relapse"})
# Statuses as EHRs send them: a coding without a system is read by its code when the code is
# one of the known codes; a status sent only as (Norwegian) text is read by its words.
_VERIFICATION_CODES = frozenset(
    {"unconfirmed", "provisional", "differential", "confirmed", "refuted", "entered-in-error"}
)
_CLINICAL_CODES = frozenset(
    {"active", "recurrence", "relapse", "inactive", "remission", "resolved"}
)
_VERIFICATION_WORDS: dict[str, str] = {
    "bekreftet": "confirmed",
    "bekrefta": "confirmed",
    "confirmed": "confirmed",
    "mistenkt": "unconfirmed",
    "mistanke": "unconfirmed",
    "suspected": "unconfirmed",
    "foreløpig": "provisional",
    "avkreftet": "refuted",
    "avkrefta": "refuted",
    "utelukket": "refuted",
    "refuted": "refuted",
    "feilregistrert": "entered-in-error",
}
_CLINICAL_WORDS: dict[str, str] = {
    "aktiv": "active",
    "active": "active",
    "tilbakefall": "recurrence",
    "inaktiv": "inactive",
    "inactive": "inactive",
    "løst": "resolved",
    "resolved": "resolved",
    "remisjon": "remission",
}
# Laboratory results sent as text (valueString). Negative phrases are read first: "ikke påvist"
# holds "påvist". Inconclusive words make a result that neither confirms nor withdraws.
_RESULT_NEGATIVE = ("ikke påvist", "ikkje påvist", "ikke funnet", "negativ", "not detected")
_RESULT_INCONCLUSIVE = ("usikker", "inkonklusiv", "inconclusive", "uavklart", "grensever")
_RESULT_POSITIVE = ("påvist", "positiv", "detected")
_OBSERVATION_COUNTS = frozenset({"final", "amended", "corrected", "preliminary"})
_ORDER_COUNTS = frozenset({"draft", "active", "on-hold"})
_ENCOUNTER_VOID = frozenset({"cancelled", "entered-in-error"})
# Procedure.status: under way (counts whenever it started) or ended (counts within the window).
_PROCEDURE_UNDER_WAY = frozenset({"preparation", "in-progress"})
_PROCEDURE_ENDED = frozenset({"completed", "stopped"})
# The category code (in the card-topic CodeSystem) that marks the Communication the
# notification card suggests, so that the service can read the record back.
NOTIFICATION_CATEGORY = "notify-municipal-doctor"
_EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC)


class Status(IntEnum):
    """M-kopper status, ordered so that the strongest evidence wins with ``max``."""

    NONE = 0
    SUSPECTED = 1
    CONFIRMED = 2

    @property
    def label(self) -> str:
        return self.name.lower()


class CareSetting(StrEnum):
    OUTPATIENT = "outpatient"
    EMERGENCY = "emergency"
    INPATIENT = "inpatient"
    FIELD = "field"
    HOME = "home"
    VIRTUAL = "virtual"
    UNKNOWN = "unknown"


# Most demanding first; the ValueSet behind each setting.
_SETTING_VALUESETS: tuple[tuple[CareSetting, str], ...] = (
    (CareSetting.INPATIENT, "care-setting-inpatient"),
    (CareSetting.FIELD, "care-setting-field"),
    (CareSetting.EMERGENCY, "care-setting-emergency"),
    (CareSetting.HOME, "care-setting-home"),
    (CareSetting.OUTPATIENT, "care-setting-outpatient"),
    (CareSetting.VIRTUAL, "care-setting-virtual"),
)


@dataclass(frozen=True, slots=True)
class Basis:
    """The evidence a status rests on, by kind and date only (never a name or an id):
    ``laboratory`` (a positive result), ``diagnosis`` (a Condition) or ``order`` (a test)."""

    kind: str
    date: dt.date | None
    status: Status


@dataclass(frozen=True, slots=True)
class Facts:
    status: Status
    status_evidence: tuple[str, ...] = ()
    care_setting: CareSetting = CareSetting.UNKNOWN
    care_setting_evidence: tuple[str, ...] = ()
    respiratory_symptoms: bool | None = None
    aerosol_procedure_ordered: bool | None = None
    aerosol_procedure_evidence: tuple[str, ...] = ()
    # An aerosol-generating Procedure in progress or performed recently (None: not asked).
    aerosol_procedure_performed: bool | None = None
    aerosol_procedure_performed_evidence: tuple[str, ...] = ()
    # The EHR's record already holds the notification to kommunelegen (None: not asked).
    notification_recorded: bool | None = None
    mkopper_test_ordered: bool | None = None
    mkopper_test_evidence: tuple[str, ...] = ()
    laboratory_negative_after_positive: bool = False
    skipped: int = 0  # malformed resources left out
    # Resources that fail strict R4 validation but name m-kopper: read field by field instead
    # of being dropped. The caller logs and counts this number (no patient data).
    read_leniently: int = 0
    # m-kopper laboratory results left out because they are older than the lookback window.
    laboratory_outside_window: int = 0
    # The evidence the status rests on (strongest status, latest date); None without a status.
    basis: Basis | None = None

    @property
    def active(self) -> bool:
        """Suspected or confirmed m-kopper: the condition for every card."""
        return self.status is not Status.NONE


@dataclass(frozen=True, slots=True)
class Sources:
    """Raw resources for one call; ``None`` means unknown (not asked, or could not be had)."""

    conditions: Sequence[dict[str, Any]] | None = None
    observations: Sequence[dict[str, Any]] | None = None
    encounters: Sequence[dict[str, Any]] | None = None
    encounter_id: str | None = None
    orders: Sequence[dict[str, Any]] | None = None
    # order-select: references ("ServiceRequest/123") of the draft orders just selected. The
    # aerosol procedure and the test are read from these only; the status from every order.
    selected: frozenset[str] | None = None
    procedures: Sequence[dict[str, Any]] | None = None
    notifications: Sequence[dict[str, Any]] | None = None
    # The call's clock: the lookback window of laboratory results is counted back from it.
    # None: no window is applied (the caller did not say what time it is).
    now: dt.datetime | None = None


# --- Small readers of raw FHIR (defensive: anything may be any type) ---------------------------


# (system, code, display) of one Coding, each None unless a string (the code stripped).
Coding = tuple[str | None, str | None, str | None]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _codings(concept: Any) -> list[Coding]:
    if not isinstance(concept, dict):
        return []
    found = []
    for coding in _list(concept.get("coding")):
        if isinstance(coding, dict):
            system, code, display = (coding.get(k) for k in ("system", "code", "display"))
            found.append(
                (
                    system if isinstance(system, str) else None,
                    code.strip() if isinstance(code, str) else None,
                    display if isinstance(display, str) else None,
                )
            )
    return found


def _concept_texts(concept: Any) -> list[str]:
    """A concept's words: each coding's display, then its text."""
    texts = [display for _, _, display in _codings(concept) if display]
    if isinstance(concept, dict) and isinstance(concept.get("text"), str):
        texts.append(concept["text"])
    return texts


def _concept_in(concept: Any, valueset: ValueSetCodes) -> bool:
    return any(valueset.contains(system, code) for system, code, _ in _codings(concept))


def _reference(resource: dict[str, Any]) -> str:
    rid = resource.get("id")
    return f"{resource.get('resourceType')}/{rid if isinstance(rid, str) and rid else '(no id)'}"


def _validates(resource: dict[str, Any], resource_type: str) -> bool:
    try:
        check_resource(resource, resource_type)
    except InvalidResource:
        return False
    return True


def _of_type(resources: Iterable[Any], resource_type: str) -> list[dict[str, Any]]:
    return [r for r in resources if isinstance(r, dict) and r.get("resourceType") == resource_type]


# --- Conditions ----------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _icd_parts(codes: frozenset[tuple[str, str]]) -> tuple[frozenset[str], frozenset[str]]:
    """The ICD-like systems of a ValueSet and their codes (once per ValueSet, not per call)."""
    systems = frozenset(system for system, code in codes if _ICD_SUBDIVISION.match(code))
    return systems, frozenset(code for system, code in codes if system in systems)


# A long problem list repeats a few dozen diagnoses, and what a concept or a text says is a pure
# function of the knowledge and of the concept's codes and words: each is read once and kept on
# the Knowledge it was read with (``Knowledge.memo``), so a new Knowledge, as after a content
# change, starts empty. Bounded: the least recently used go first, and a concept larger than
# this (a pasted note, a long list of codings) is read every time instead of kept.
_MEMO_SIZE = 4096
_MEMO_CHARS = 256
_MEMO_CODINGS = 4
# A concept given as its JSON text (a request body's Condition, before it is parsed).
_MEMO_JSON_BYTES = 1024
_READERS = "facts.readers"


class _Readers:
    """The memoised readers of one Knowledge (its m-kopper diagnosis codes and matching)."""

    __slots__ = (
        "_concept",
        "_exposure",
        "_json",
        "_text",
        "diagnosis",
        "icd_codes",
        "icd_systems",
        "matching",
    )

    def __init__(self, knowledge: Knowledge) -> None:
        self.matching = knowledge.content.matching
        self.diagnosis = knowledge.valueset("mkopper-diagnosis")
        self.icd_systems, self.icd_codes = _icd_parts(self.diagnosis.codes)
        self._text = lru_cache(maxsize=_MEMO_SIZE)(partial(_mention, self.matching))
        self._exposure = lru_cache(maxsize=_MEMO_SIZE)(partial(_exposure, self.matching))
        self._concept = lru_cache(maxsize=_MEMO_SIZE)(partial(_concept_names, self))
        self._json = lru_cache(maxsize=_MEMO_SIZE)(self._names_in_json)

    def mention(self, text: str) -> bool | None:
        """:func:`_mention` with this knowledge's matching."""
        if len(text) > _MEMO_CHARS:
            return _mention(self.matching, text)
        return self._text(text)

    def exposure(self, text: str) -> bool:
        """:func:`_exposure` with this knowledge's matching."""
        if len(text) > _MEMO_CHARS:
            return _exposure(self.matching, text)
        return self._exposure(text)

    def names_mkopper(self, concept: Any) -> bool:
        """:func:`names_mkopper` with this knowledge."""
        if isinstance(concept, dict) and "coding" not in concept:
            # Text only, as most problem-list entries: the text's own verdict decides.
            text = concept.get("text")
            return isinstance(text, str) and self.mention(text) is True
        return self.names(*_concept_parts(concept))

    def names_mkopper_json(self, concept: bytes) -> bool:
        """:meth:`names_mkopper` of a concept given as JSON text (valid JSON, strict UTF-8,
        no escaped lone surrogate); kept per text, as the same codes come again and again."""
        if len(concept) > _MEMO_JSON_BYTES:
            return self._names_in_json(concept)
        return self._json(concept)

    def _names_in_json(self, concept: bytes) -> bool:
        return self.names_mkopper(json.loads(concept))

    def names(self, codings: tuple[Coding, ...], text: str | None) -> bool:
        """:func:`names_mkopper` of a concept given as :func:`_concept_parts`."""
        if _worth_keeping(codings, text):
            return self._concept(codings, text)
        return _concept_names(self, codings, text)


def _worth_keeping(codings: tuple[Coding, ...], text: str | None) -> bool:
    if len(codings) > _MEMO_CODINGS:
        return False
    size = len(text) if text else 0
    for coding in codings:
        size += sum(len(part) for part in coding if part)
    return size <= _MEMO_CHARS


def _readers(knowledge: Knowledge) -> _Readers:
    readers: _Readers | None = knowledge.memo.get(_READERS)
    if readers is None:
        readers = knowledge.memo.setdefault(_READERS, _Readers(knowledge))
    return readers


def _concept_parts(concept: Any) -> tuple[tuple[Coding, ...], str | None]:
    """What :func:`names_mkopper` reads of a CodeableConcept, as a hashable key: its codings
    (:func:`_codings`) and its text."""
    if not isinstance(concept, dict):
        return (), None
    text = concept.get("text")
    codings = tuple(_codings(concept)) if "coding" in concept else ()
    return codings, text if isinstance(text, str) else None


def names_mkopper(knowledge: Knowledge, concept: Any) -> bool:
    """Does this CodeableConcept mean m-kopper (code, local ICD-10 subdivision, or text)?"""
    return _readers(knowledge).names_mkopper(concept)


def _concept_names(readers: _Readers, codings: tuple[Coding, ...], text: str | None) -> bool:
    texts = [display for _, _, display in codings if display]
    if text is not None:
        texts.append(text)
    mentions = [readers.mention(text) for text in texts]
    if False in mentions and True not in mentions:
        # The clinician's words rule it out ("Mpox utelukket"), whatever code was picked.
        return False
    for system, code, _ in codings:
        if readers.diagnosis.contains(system, code):
            return True
        local_icd = system is None or system in readers.icd_systems or "icd" in system.lower()
        match = _ICD_SUBDIVISION.match(code.upper()) if code else None
        if local_icd and match is not None and match.group(1) in readers.icd_codes:
            return True
    return True in mentions


def _status_code(
    concept: Any, system: str, known: frozenset[str], words: dict[str, str]
) -> str | None:
    """A status code as EHRs send it: the coding in ``system``; else a coding without a system
    whose code is known; else the status's text or display read by its words. Anything else is
    unknown (``None``)."""
    codings = _codings(concept)
    for coding_system, coding_code, _ in codings:
        if coding_system == system and coding_code:
            return coding_code
    for coding_system, coding_code, _ in codings:
        if coding_system is None and coding_code and coding_code.lower() in known:
            return coding_code.lower()
    for text in _concept_texts(concept):
        normal = normalise_text(text).strip()
        if normal in words:
            return words[normal]
    return None


def condition_status(condition: dict[str, Any]) -> Status:
    """The status one m-kopper Condition gives (its code already matched)."""
    verification = _status_code(
        condition.get("verificationStatus"), VER_STATUS, _VERIFICATION_CODES, _VERIFICATION_WORDS
    )
    if verification in _NOT_MKOPPER:
        return Status.NONE
    clinical = _status_code(
        condition.get("clinicalStatus"), CLINICAL_STATUS, _CLINICAL_CODES, _CLINICAL_WORDS
    )
    if clinical is not None and clinical not in _ACTIVE:
        return Status.NONE
    if clinical is None and any(key.startswith("abatement") for key in condition):
        return Status.NONE
    if verification == "confirmed":
        return Status.CONFIRMED
    # unconfirmed, provisional, differential, absent or unknown: suspected, never confirmed.
    return Status.SUSPECTED


# --- Observations --------------------------------------------------------------------------------


def _instant(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = value.replace("Z", "+00:00")
    try:
        parsed = dt.datetime.fromisoformat(text) if "T" in text else None
        if parsed is None:
            year, month, day = [*(int(part) for part in text.split("-")), 1, 1][:3]
            parsed = dt.datetime(year, month, day)
    except (ValueError, TypeError, OverflowError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _observation_time(observation: dict[str, Any]) -> dt.datetime:
    period = observation.get("effectivePeriod")
    candidates = [
        observation.get("effectiveDateTime"),
        observation.get("effectiveInstant"),
        period.get("start") if isinstance(period, dict) else None,
        observation.get("issued"),
    ]
    for candidate in candidates:
        instant = _instant(candidate)
        if instant is not None:
            return instant
    return _EARLIEST


def _text_result(value: Any) -> bool | None:
    """A result sent as text: påvist / ikke påvist / positiv / negativ; inconclusive is None."""
    if not isinstance(value, str):
        return None
    normal = normalise_text(value)
    if any(phrase in normal for phrase in _RESULT_NEGATIVE):
        return False
    if any(phrase in normal for phrase in _RESULT_INCONCLUSIVE):
        return None
    if any(re.search(rf"(?<!\w){phrase}", normal) for phrase in _RESULT_POSITIVE):
        return True
    return None


def _result(knowledge: Knowledge, observation: dict[str, Any]) -> bool | None:
    """True positive, False negative, None neither (inconclusive, missing, other)."""
    positive = knowledge.valueset("laboratory-result-positive")
    negative = knowledge.valueset("laboratory-result-negative")
    value = observation.get("valueCodeableConcept")
    if "valueString" in observation:
        text = _text_result(observation.get("valueString"))
        if text is not None:
            return text
    # The value is the result; interpretation is the fallback when the value says nothing.
    for concept in [value, *_list(observation.get("interpretation"))]:
        if _concept_in(concept, positive):
            return True
        if _concept_in(concept, negative):
            return False
    if isinstance(value, dict):
        return _text_result(value.get("text"))
    return None


# --- Encounter -----------------------------------------------------------------------------------


def _encounter_concepts(encounter: dict[str, Any]) -> list[Any]:
    klass = encounter.get("class")
    if isinstance(klass, dict):  # R4: one Coding
        concepts: list[Any] = [{"coding": [klass]}]
    else:  # R5: a list of CodeableConcepts
        concepts = _list(klass)
    return concepts + _list(encounter.get("type"))


def _care_setting(
    knowledge: Knowledge, encounters: Sequence[dict[str, Any]], encounter_id: str | None
) -> tuple[CareSetting, tuple[str, ...], int]:
    candidates = _of_type(encounters, "Encounter")
    if encounter_id:
        candidates = [e for e in candidates if e.get("id") == encounter_id] or (
            candidates if len(candidates) == 1 and not candidates[0].get("id") else []
        )
    if len(candidates) != 1:
        return CareSetting.UNKNOWN, (), 0
    encounter = candidates[0]
    r5_shape = isinstance(encounter.get("class"), list)
    # R5-shaped Encounters cannot validate as R4; they are read field by field instead.
    if not r5_shape and not _validates(encounter, "Encounter"):
        return CareSetting.UNKNOWN, (), 1
    status = encounter.get("status")
    if not isinstance(status, str) or status in _ENCOUNTER_VOID:
        return CareSetting.UNKNOWN, (), 0
    # The class and type codes, read once for the six settings.
    codes = [
        (system, code)
        for concept in _encounter_concepts(encounter)
        for system, code, _ in _codings(concept)
    ]
    for setting, name in _SETTING_VALUESETS:
        valueset = knowledge.valueset(name)
        if any(valueset.contains(system, code) for system, code in codes):
            return setting, (_reference(encounter),), 0
    return CareSetting.UNKNOWN, (), 0


# --- Orders --------------------------------------------------------------------------------------


def _aerosol_valuesets(knowledge: Knowledge) -> list[ValueSetCodes]:
    sets = [knowledge.valueset("aerosol-generating-procedures")]
    if knowledge.content.matching.include_secondary_aerosol_procedures:
        sets.append(knowledge.valueset("aerosol-generating-procedures-secondary"))
    return sets


def aerosol_search_codes(knowledge: Knowledge) -> list[tuple[str, str]]:
    """The codes a ServiceRequest search needs to find every possibly aerosol-generating order."""
    sets = [*_aerosol_valuesets(knowledge), knowledge.valueset("nasal-oxygen")]
    return sorted({pair for valueset in sets for pair in valueset.codes})


def _aerosol_code(knowledge: Knowledge, resource: dict[str, Any], devices: str) -> bool:
    """An aerosol-generating procedure by code; oxygen by nasal cannula only as high flow
    (TERMINOLOGY.md), with the device named under ``devices`` (a list of CodeableConcepts)."""
    code = resource.get("code")
    if any(_concept_in(code, valueset) for valueset in _aerosol_valuesets(knowledge)):
        return True
    if _concept_in(code, knowledge.valueset("nasal-oxygen")):
        device = knowledge.valueset("high-flow-oxygen-device")
        return any(_concept_in(used, device) for used in _list(resource.get(devices)))
    return False


def _is_aerosol_generating(knowledge: Knowledge, order: dict[str, Any]) -> bool:
    return _aerosol_code(knowledge, order, "orderDetail")


def _is_aerosol_procedure(knowledge: Knowledge, procedure: dict[str, Any]) -> bool:
    return _aerosol_code(knowledge, procedure, "usedCode")


def _procedure_end(procedure: dict[str, Any]) -> dt.datetime | None:
    period = procedure.get("performedPeriod")
    period = period if isinstance(period, dict) else {}
    for candidate in (period.get("end"), procedure.get("performedDateTime"), period.get("start")):
        instant = _instant(candidate)
        if instant is not None:
            return instant
    return None


def _read_procedures(
    knowledge: Knowledge,
    procedures: Sequence[Any] | None,
    reading: _Reading,
    now: dt.datetime | None,
) -> tuple[bool | None, tuple[str, ...]]:
    """Step 4: an aerosol-generating Procedure under way, or ended within the window."""
    if procedures is None:
        return None, ()
    hours = knowledge.content.matching.aerosol_procedure_recent_hours
    since = now - dt.timedelta(hours=hours) if now is not None and hours is not None else None
    evidence: list[str] = []
    for procedure in _of_type(procedures, "Procedure"):
        if not _is_aerosol_procedure(knowledge, procedure):
            continue
        if not _validates(procedure, "Procedure"):
            reading.lenient += 1
        status = procedure.get("status")
        if status in _PROCEDURE_UNDER_WAY:
            evidence.append(_reference(procedure))
        elif status in _PROCEDURE_ENDED and since is not None:
            ended = _procedure_end(procedure)
            if ended is not None and ended >= since:
                evidence.append(_reference(procedure))
    return bool(evidence), tuple(evidence)


def _read_notifications(
    knowledge: Knowledge, communications: Sequence[Any] | None, now: dt.datetime | None
) -> bool | None:
    """Step 5: the notification to kommunelegen is already in the record: a completed
    Communication with the notification card's category, sent within the window (an undated
    one counts only when no window applies)."""
    if communications is None:
        return None
    days = knowledge.content.matching.notification_lookback_days
    since = now - dt.timedelta(days=days) if now is not None and days is not None else None
    system = knowledge.codesystem_url("card-topic")
    for communication in _of_type(communications, "Communication"):
        if communication.get("status") != "completed":
            continue
        marked = any(
            (coding_system, code) == (system, NOTIFICATION_CATEGORY)
            for concept in _list(communication.get("category"))
            for coding_system, code, _ in _codings(concept)
        )
        if not marked:
            continue
        if since is None:
            return True
        sent = _instant(communication.get("sent"))
        if sent is not None and sent >= since:
            return True
    return False


# --- Putting it together -------------------------------------------------------------------------


@dataclass(slots=True)
class _Reading:
    """What the steps of :func:`derive_facts` found so far."""

    status: Status = Status.NONE
    evidence: list[str] = field(default_factory=list)
    skipped: int = 0
    lenient: int = 0
    outside_window: int = 0
    # The latest date of a resolved or refuted m-kopper Condition.
    ruled_out_at: dt.datetime | None = None

    bases: list[Basis] = field(default_factory=list)

    def saw(self, status: Status, reference: str, basis: Basis | None = None) -> None:
        self.status = max(self.status, status)
        self.evidence.append(reference)
        if basis is not None:
            self.bases.append(basis)

    def basis(self) -> Basis | None:
        strongest = [b for b in self.bases if b.status is self.status]
        if self.status is Status.NONE or not strongest:
            return None
        return max(strongest, key=lambda b: b.date or dt.date.min)


def _names_exposure(readers: _Readers, concept: Any) -> bool:
    """The Condition's text names m-kopper as contact or exposure ("nærkontakt med mpox")."""
    if not readers.matching.exposure_before:
        return False
    return any(readers.exposure(text) for text in _concept_texts(concept))


def _exposure(matching: Matching, text: str) -> bool:
    """A trigger within the window before a name of m-kopper makes the text exposure."""
    window = matching.negation_window_words
    normal = normalise_text(text)
    for found in TEXT_PATTERN.finditer(normal):
        before_text = _SCOPE_END.split(normal[: found.start()])[-1]
        words = [w for word in _WORD.findall(before_text)[-window:] for w in word.split("-")]
        if _is_trigger_any(words, matching.exposure_before):
            return True
    return False


def _condition_date(condition: dict[str, Any]) -> dt.datetime | None:
    """The latest date a Condition carries (recorded, abated, asserted): when it was said."""
    dates = [
        _instant(condition.get(key))
        for key in ("recordedDate", "abatementDateTime", "assertedDate", "onsetDateTime")
    ]
    known = [date for date in dates if date is not None]
    return max(known) if known else None


def condition_reader(knowledge: Knowledge) -> Callable[[bytes], bool]:
    """What :func:`_read_conditions` asks first of a Condition's ``code``, given as its JSON
    text (``null`` when absent; see :meth:`_Readers.names_mkopper_json`): a Condition it says
    no to is passed over unread, so a caller may leave it out before it is even parsed."""
    return _readers(knowledge).names_mkopper_json


def _read_conditions(knowledge: Knowledge, conditions: Iterable[Any], reading: _Reading) -> None:
    """Step 1: m-kopper Conditions give a status by their clinical and verification status.
    A Condition that fails strict validation is read field by field and counted."""
    readers = _readers(knowledge)
    for condition in conditions:
        # One pass over a long problem list: the type is checked here, not in a list first.
        if not isinstance(condition, dict) or condition.get("resourceType") != "Condition":
            continue
        if not readers.names_mkopper(condition.get("code")):
            continue
        if _names_exposure(readers, condition.get("code")):
            continue
        if not _validates(condition, "Condition"):
            reading.lenient += 1
        found = condition_status(condition)
        if found is not Status.NONE:
            recorded = _instant(condition.get("recordedDate")) or _instant(
                condition.get("onsetDateTime")
            )
            basis = Basis("diagnosis", recorded.date() if recorded else None, found)
            reading.saw(found, _reference(condition), basis)
        elif (
            _status_code(
                condition.get("verificationStatus"),
                VER_STATUS,
                _VERIFICATION_CODES,
                _VERIFICATION_WORDS,
            )
            != "entered-in-error"
        ):
            # Resolved or refuted: no older positive result may bring it back. (Entered in
            # error says nothing about the disease.)
            date = _condition_date(condition)
            if date is not None:
                reading.ruled_out_at = max(reading.ruled_out_at or date, date)


def _is_mkopper_test(knowledge: Knowledge, concept: Any) -> bool:
    """A test in the ValueSet, or a local test code whose text or display names m-kopper."""
    if _concept_in(concept, knowledge.valueset("mkopper-laboratory-tests")):
        return True
    readers = _readers(knowledge)
    return any(readers.mention(text) is True for text in _concept_texts(concept))


def _suspected_only(knowledge: Knowledge, concept: Any) -> bool:
    only = set(knowledge.content.matching.laboratory_suspected_only)
    return any(f"{system}|{code}" in only for system, code, _ in _codings(concept))


def _read_laboratory(
    knowledge: Knowledge, observations: Iterable[Any], reading: _Reading, now: dt.datetime | None
) -> bool:
    """Step 2: the latest m-kopper result decides; a positive one confirms (a positive generic
    orthopoxvirus test only suspects). Results older than the lookback window, and results
    older than a resolved or refuted Condition, do not count. An inconclusive result is no
    result: it never undoes a positive one. Returns whether a negative result came after a
    positive one."""
    days = knowledge.content.matching.laboratory_lookback_days
    since = now - dt.timedelta(days=days) if now is not None and days is not None else None
    results: list[tuple[dt.datetime, bool, str, Status]] = []
    for observation in _of_type(observations, "Observation"):
        code = observation.get("code")
        if not _is_mkopper_test(knowledge, code):
            continue
        if not _validates(observation, "Observation"):
            reading.lenient += 1
        status = observation.get("status")
        if not isinstance(status, str) or status not in _OBSERVATION_COUNTS:
            continue
        result = _result(knowledge, observation)
        if result is None:
            continue
        when = _observation_time(observation)
        if since is not None and when < since:
            reading.outside_window += 1
            continue
        if reading.ruled_out_at is not None and when <= reading.ruled_out_at:
            continue
        strength = Status.SUSPECTED if _suspected_only(knowledge, code) else Status.CONFIRMED
        results.append((when, result, _reference(observation), strength))
    results.sort(key=lambda item: (item[0], item[1]))  # a positive wins a tie: it sorts last
    if not results:
        return False
    when, latest_positive, latest_ref, strength = results[-1]
    if latest_positive:
        date = when.date() if when != _EARLIEST else None
        reading.saw(strength, latest_ref, Basis("laboratory", date, strength))
        return False
    return any(positive for _, positive, _, _ in results)


@dataclass(frozen=True, slots=True)
class _Orders:
    aerosol: bool | None = None
    aerosol_evidence: tuple[str, ...] = ()
    test: bool | None = None
    test_evidence: tuple[str, ...] = ()


def _read_orders(
    knowledge: Knowledge,
    orders: Sequence[Any] | None,
    reading: _Reading,
    selected: frozenset[str] | None = None,
    only_if_active: bool = False,
) -> _Orders:
    """Step 3: aerosol-generating procedures and m-kopper tests among the orders; an ordered
    test means the clinician suspects m-kopper. With ``selected``, the procedure and the test
    are read from the selected orders only (what was just chosen), the suspicion from all.
    With ``only_if_active``, an order that is only aerosol-generating is validated once the
    orders have shown that the patient is suspected or confirmed, and not otherwise."""
    if orders is None:
        return _Orders()
    lab_tests = knowledge.valueset("mkopper-laboratory-tests")
    aerosol_evidence: list[str] = []
    test_evidence: list[str] = []
    test_dates: list[dt.date] = []
    suspicion: list[str] = []
    aerosol_only: list[dict[str, Any]] = []
    for order in _of_type(orders, "ServiceRequest"):
        is_test = _concept_in(order.get("code"), lab_tests)
        is_aerosol = _is_aerosol_generating(knowledge, order)
        if not (is_test or is_aerosol):
            continue
        if only_if_active and not is_test:
            aerosol_only.append(order)
        elif not _validates(order, "ServiceRequest"):
            reading.lenient += 1
        status = order.get("status")
        if not isinstance(status, str) or status not in _ORDER_COUNTS:
            continue
        reference = _reference(order)
        if is_test:
            suspicion.append(reference)
            authored = _instant(order.get("authoredOn"))
            if authored is not None:
                test_dates.append(authored.date())
        if selected is not None and reference not in selected:
            continue
        if is_aerosol:
            aerosol_evidence.append(reference)
        if is_test:
            test_evidence.append(reference)
    if suspicion and reading.status is Status.NONE:
        reading.status = Status.SUSPECTED
        reading.evidence.extend(suspicion)
        date = max(test_dates) if test_dates else None
        reading.bases.append(Basis("order", date, Status.SUSPECTED))
    if reading.status is not Status.NONE:
        reading.lenient += sum(not _validates(order, "ServiceRequest") for order in aerosol_only)
    return _Orders(
        aerosol=bool(aerosol_evidence),
        aerosol_evidence=tuple(aerosol_evidence),
        test=bool(test_evidence),
        test_evidence=tuple(test_evidence),
    )


def derive_facts(knowledge: Knowledge, sources: Sources, *, only_if_active: bool = False) -> Facts:
    """The facts of one call, in named steps: conditions, laboratory, orders, procedures,
    notifications, care setting.

    The status is known after the orders, and every rule asks for a suspected or confirmed
    patient first. With ``only_if_active`` (a service's evaluation), a patient the first three
    steps find neither suspected nor confirmed gets those facts only: the procedures, the
    notifications and the care setting are not read, and an order that is only
    aerosol-generating is not validated (nothing they hold would give a card). Their
    malformed resources are then not counted either: they were not read."""
    reading = _Reading()
    _read_conditions(knowledge, sources.conditions or [], reading)
    negative_after_positive = _read_laboratory(
        knowledge, sources.observations or [], reading, sources.now
    )
    orders = _read_orders(knowledge, sources.orders, reading, sources.selected, only_if_active)
    rest = not (only_if_active and reading.status is Status.NONE)
    performed, performed_evidence = _read_procedures(
        knowledge, sources.procedures if rest else None, reading, sources.now
    )
    setting: CareSetting = CareSetting.UNKNOWN
    setting_evidence: tuple[str, ...] = ()
    bad_encounters = 0
    if rest and sources.encounters is not None:
        setting, setting_evidence, bad_encounters = _care_setting(
            knowledge, sources.encounters, sources.encounter_id
        )
    return Facts(
        status=reading.status,
        status_evidence=tuple(dict.fromkeys(reading.evidence)),
        care_setting=setting,
        care_setting_evidence=setting_evidence,
        respiratory_symptoms=None,
        aerosol_procedure_ordered=orders.aerosol,
        aerosol_procedure_evidence=orders.aerosol_evidence,
        aerosol_procedure_performed=performed,
        aerosol_procedure_performed_evidence=performed_evidence,
        notification_recorded=_read_notifications(
            knowledge, sources.notifications if rest else None, sources.now
        ),
        mkopper_test_ordered=orders.test,
        mkopper_test_evidence=orders.test_evidence,
        laboratory_negative_after_positive=negative_after_positive,
        skipped=reading.skipped + bad_encounters,
        read_leniently=reading.lenient,
        laboratory_outside_window=reading.outside_window,
        basis=reading.basis(),
    )
