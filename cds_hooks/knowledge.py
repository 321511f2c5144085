"""The guideline knowledge: the content file (TOML) and the ValueSets, validated at load.

Every word a clinician reads (card text, links, override reasons, service titles) lives in the
content file, so that an infection-control team can edit it without touching Python. The codes
that mean m-kopper live in FHIR ValueSets under ``fhir_profiles/valuesets``; code elsewhere names
a ValueSet by its canonical URL (built from ``terminology.canonical_base``), never a literal code.

A broken file raises :class:`~cds_hooks.errors.ContentError` naming the file and the key, so the
service refuses to start rather than show a half-rendered card.
"""

from __future__ import annotations

import datetime as dt
import json
import string
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from cds_hooks.errors import ContentError
from cds_hooks.fhir import InvalidResource, parse_resource
from cds_hooks.models import SUMMARY_MAX

Language = Literal["nb", "en"]
LANGUAGES: tuple[Language, ...] = ("nb", "en")

Key = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")]
Line = Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]
SummaryLine = Annotated[
    str, StringConstraints(min_length=1, max_length=SUMMARY_MAX - 1, pattern=r"\S")
]

FOOTER_FIELDS = frozenset({"owner", "title", "version", "sections"})

# The ValueSets the facts need (names after ``{canonical_base}/ValueSet/``).
REQUIRED_VALUESETS: tuple[str, ...] = (
    "mkopper-diagnosis",
    "mkopper-laboratory-tests",
    "laboratory-result-positive",
    "laboratory-result-negative",
    "aerosol-generating-procedures",
    "aerosol-generating-procedures-secondary",
    "nasal-oxygen",
    "high-flow-oxygen-device",
    "care-setting-outpatient",
    "care-setting-emergency",
    "care-setting-inpatient",
    "care-setting-field",
    "care-setting-home",
    "care-setting-virtual",
)


def _https(value: str) -> str:
    if not value.startswith("https://") or len(value) <= len("https://"):
        raise ValueError("must be an https URL")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Text(_Strict):
    """A text in every supported language."""

    nb: Line
    en: Line

    def get(self, language: Language) -> str:
        return self.nb if language == "nb" else self.en


class SummaryText(Text):
    """A card summary: under 140 characters in every language (the spec's limit)."""

    nb: SummaryLine
    en: SummaryLine


class Guideline(_Strict):
    title: Text
    owner: Line
    version: Line
    last_changed: dt.date
    url: str | None = None
    source_label: Text
    footer: Text

    @field_validator("url")
    @classmethod
    def _url_https(cls, value: str | None) -> str | None:
        return None if value is None else _https(value)

    @field_validator("footer")
    @classmethod
    def _footer_fields(cls, value: Text) -> Text:
        for text in (value.nb, value.en):
            names = {name for _, name, _, _ in string.Formatter().parse(text) if name}
            unknown = names - FOOTER_FIELDS
            if unknown:
                raise ValueError(f"unknown placeholder(s) {sorted(unknown)}")
        return value


class Terminology(_Strict):
    canonical_base: str

    @field_validator("canonical_base")
    @classmethod
    def _base(cls, value: str) -> str:
        return _https(value).rstrip("/")


class Matching(_Strict):
    include_secondary_aerosol_procedures: bool = False
    # Free text that names m-kopper is not a case when a trigger stands within
    # ``negation_window_words`` words before or after the name (NegEx-style). Triggers are
    # matched on normalised, lower-case words; a trigger ending in "*" matches as a prefix.
    negation_window_words: int = Field(default=4, ge=1, le=12)
    negation_before: tuple[str, ...] = ()
    negation_after: tuple[str, ...] = ()
    # A Condition whose text names m-kopper as contact or exposure ("nærkontakt med mpox") is
    # not a case: a trigger within the window before the name makes it exposure, not disease.
    exposure_before: tuple[str, ...] = ()
    # A laboratory result older than this many days (counted back from the call's clock) does
    # not make a case today. None: no window.
    laboratory_lookback_days: int | None = Field(default=None, ge=1, le=3650)
    # Tests ("system|code", from the mkopper-laboratory-tests ValueSet) whose positive result
    # makes a case probable, not confirmed: it counts as suspected.
    laboratory_suspected_only: tuple[str, ...] = ()
    # An aerosol-generating Procedure that ended (completed or stopped) at most this many hours
    # before the call's clock still calls for the respirator card. None: only one in progress.
    aerosol_procedure_recent_hours: int | None = Field(default=None, ge=1, le=24 * 30)
    # A recorded notification (the Communication the notification card suggests) sent at most
    # this many days before the call's clock keeps the notification card away. None: no window.
    notification_lookback_days: int | None = Field(default=None, ge=1, le=3650)

    @field_validator("negation_before", "negation_after", "exposure_before")
    @classmethod
    def _triggers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for trigger in value:
            if not trigger.strip() or trigger != trigger.strip().lower():
                raise ValueError(f"trigger {trigger!r} must be lower-case words")
        return value


class LinkContent(_Strict):
    url: str
    label: Text

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _https(value)


class OverrideReasonContent(_Strict):
    display: Text
    # 0: the card comes back next time; otherwise hours the same card stays away for the patient.
    suppress_hours: int = Field(ge=0, le=24 * 365)


class VariantContent(_Strict):
    """The same advice in words that fit one setting (an ambulance, a home visit)."""

    summary: SummaryText
    detail: Text


class FindingContent(_Strict):
    indicator: Literal["info", "warning", "critical"]
    priority: int = Field(ge=0)
    sections: list[Line] = Field(min_length=1)
    links: list[Key] = Field(default_factory=list)
    override_reasons: list[Key] = Field(default_factory=list)
    topic: Text
    summary: SummaryText
    detail: Text
    merge_into: Key | None = None
    # When the card cap would cut this card, it is folded into the first of these cards shown
    # instead (related advice merged, never silently lost).
    merge_when_cut: list[Key] = Field(default_factory=list)
    # Setting-specific words (keys given by the rules, e.g. ``field``, ``home``).
    variants: dict[Key, VariantContent] = Field(default_factory=dict)
    # Feedback suppression (plugin): an override holds for this encounter only, not the patient.
    suppress_per_encounter: bool = False
    # Feedback suppression: the card comes back when the m-kopper status changes (None: default).
    resurface_on_status_change: bool | None = None
    # Feedback suppression: accepting the card's suggestion keeps the card away as this
    # override reason does (the notification recorded is the notification done).
    accept_suppresses_as: Key | None = None


class NotificationRecord(_Strict):
    label: Text
    description: Text
    recipient: Text
    medium: Text
    reason: Text
    payload: Text


class EvidenceContent(_Strict):
    """The evidence line on every card: what the status rests on, by kind and date only.
    ``{date}`` is filled in (dd.mm.yyyy); ``{status}`` with ``suspected`` or ``confirmed``."""

    line: Text  # "Grunnlag: {basis}"
    laboratory: Text
    diagnosis: Text
    order: Text
    undated: Text
    suspected: Text
    confirmed: Text


class ServiceContent(_Strict):
    title: Text
    description: Text


class Content(_Strict):
    schema_version: Literal[1]
    guideline: Guideline
    terminology: Terminology
    matching: Matching = Matching()
    links: dict[Key, LinkContent]
    override_reasons: dict[Key, OverrideReasonContent]
    findings: dict[Key, FindingContent] = Field(min_length=1)
    notification_record: NotificationRecord
    services: dict[Key, ServiceContent]
    # Optional: without it the cards carry no evidence line.
    evidence: EvidenceContent | None = None

    @model_validator(mode="after")
    def _references(self) -> Content:
        problems: list[str] = []
        for key, finding in self.findings.items():
            for link in finding.links:
                if link not in self.links:
                    problems.append(f"findings.{key}.links: no link named {link!r}")
            for reason in finding.override_reasons:
                if reason not in self.override_reasons:
                    problems.append(
                        f"findings.{key}.override_reasons: no override reason named {reason!r}"
                    )
            host = finding.merge_into
            if host is not None:
                if host not in self.findings or host == key:
                    problems.append(f"findings.{key}.merge_into: no other finding named {host!r}")
                elif self.findings[host].merge_into is not None:
                    problems.append(f"findings.{key}.merge_into: {host!r} is merged itself")
            for target in finding.merge_when_cut:
                if target not in self.findings or target == key:
                    problems.append(
                        f"findings.{key}.merge_when_cut: no other finding named {target!r}"
                    )
            accepted = finding.accept_suppresses_as
            if accepted is not None and accepted not in self.override_reasons:
                problems.append(
                    f"findings.{key}.accept_suppresses_as: no override reason named {accepted!r}"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self


@dataclass(frozen=True, slots=True)
class ValueSetCodes:
    """The enumerated codes of one ValueSet, as (system, code) pairs."""

    url: str
    codes: frozenset[tuple[str, str]]

    def contains(self, system: str | None, code: str | None) -> bool:
        return system is not None and code is not None and (system, code) in self.codes

    @property
    def systems(self) -> frozenset[str]:
        return frozenset(system for system, _ in self.codes)

    def codes_in(self, system: str) -> frozenset[str]:
        return frozenset(code for sys, code in self.codes if sys == system)


@dataclass(frozen=True, slots=True)
class Knowledge:
    content: Content
    source: str
    valuesets: Mapping[str, ValueSetCodes]
    # The ValueSets under this content's canonical base by name: the facts look one up for
    # every resource they read, and building its URL each time cost more than the lookup.
    _by_name: Mapping[str, ValueSetCodes] = field(init=False, repr=False, compare=False)
    # What readers derive from this knowledge and keep (each bounds its own). It belongs to
    # this object: a new Knowledge, as after a content change, starts empty, so nothing
    # derived from the old content answers for the new.
    memo: dict[str, Any] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        prefix = self.valueset_url("")
        by_name = {
            url[len(prefix) :]: valueset
            for url, valueset in self.valuesets.items()
            if url.startswith(prefix)
        }
        object.__setattr__(self, "_by_name", by_name)

    @property
    def canonical_base(self) -> str:
        return self.content.terminology.canonical_base

    def valueset_url(self, name: str) -> str:
        return f"{self.canonical_base}/ValueSet/{name}"

    def valueset(self, name: str) -> ValueSetCodes:
        try:
            return self._by_name[name]
        except KeyError:
            raise ContentError(f"ValueSet {self.valueset_url(name)} is not loaded") from None

    def codesystem_url(self, name: str) -> str:
        return f"{self.canonical_base}/CodeSystem/{name}"


# --- Loading -----------------------------------------------------------------------------------


def default_content_path() -> Path:
    return Path(str(resources.files("cds_hooks") / "content" / "mkopper.toml"))


def default_valueset_dir() -> Path:
    return Path(str(resources.files("fhir_profiles") / "valuesets"))


def _location(loc: Iterable[Any]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def load_content(path: Path) -> Content:
    """Read and validate one content file; :class:`ContentError` names file and key."""
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ContentError(f"{path}: file not found") from None
    except OSError as exc:
        raise ContentError(f"{path}: cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ContentError(f"{path}: not valid TOML: {exc}") from None
    try:
        return Content.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{_location(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise ContentError(
            f"{path}: {'; '.join(problems)[:1000]}",
            details=[{"file": str(path), "key": _location(e["loc"])} for e in exc.errors()],
        ) from None


def _valueset_codes(path: Path) -> ValueSetCodes:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ContentError(f"{path}: not readable JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ContentError(f"{path}: not a FHIR resource")
    try:
        parse_resource(data, "ValueSet")
    except InvalidResource as exc:
        raise ContentError(f"{path}: {exc}") from None
    url = data.get("url")
    if not isinstance(url, str):
        raise ContentError(f"{path}: url: required")
    codes: set[tuple[str, str]] = set()
    for index, include in enumerate((data.get("compose") or {}).get("include") or []):
        concepts = include.get("concept")
        system = include.get("system")
        # Only enumerated codes: a filter or an imported ValueSet would need a terminology
        # server, and the service must know at start exactly which codes it acts on.
        if not system or not concepts or include.get("filter") or include.get("valueSet"):
            raise ContentError(
                f"{path}: compose.include.{index}: only system + concept lists are supported"
            )
        codes.update((system, concept["code"]) for concept in concepts)
    return ValueSetCodes(url=url, codes=frozenset(codes))


def load_valuesets(directory: Path) -> dict[str, ValueSetCodes]:
    loaded: dict[str, ValueSetCodes] = {}
    for path in sorted(directory.glob("ValueSet-*.json")):
        valueset = _valueset_codes(path)
        if valueset.url in loaded:
            raise ContentError(f"{path}: url: duplicate ValueSet {valueset.url}")
        loaded[valueset.url] = valueset
    return loaded


def load_knowledge(
    path: str | Path | None = None, *, valueset_dir: str | Path | None = None
) -> Knowledge:
    """Load content (default: the packaged file) and ValueSets; raise ContentError if broken."""
    content_path = Path(path) if path else default_content_path()
    content = load_content(content_path)
    vs_dir = Path(valueset_dir) if valueset_dir else default_valueset_dir()
    valuesets = load_valuesets(vs_dir)
    knowledge = Knowledge(content=content, source=str(content_path), valuesets=valuesets)
    missing = [
        knowledge.valueset_url(name)
        for name in REQUIRED_VALUESETS
        if knowledge.valueset_url(name) not in valuesets
    ]
    if missing:
        raise ContentError(
            f"{content_path}: terminology.canonical_base: no ValueSet in {vs_dir} for "
            + ", ".join(missing)
        )
    return knowledge
