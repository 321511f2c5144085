"""Wire models for everything CDS Hooks 2.0.1 puts on the wire.

Field names keep the specification's camelCase so the code can be grepped
against https://cds-hooks.hl7.org/2.0/. Serialise with :meth:`WireModel.wire`:
absent optional fields are omitted, never ``null`` and never empty (the spec:
"OPTIONAL JSON string and array attributes should be omitted rather than
having a null or empty value"), except ``CdsResponse.cards`` which is always
present, ``[]`` when there is nothing to say. A :class:`WireTemplate` gives the same wire
form for models filled from one validated model, without dumping what they share again.
"""

from __future__ import annotations

import uuid as uuid_lib
from collections.abc import Collection, Mapping
from typing import Annotated, Any, Generic, Literal, TypeVar

import orjson
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

NonEmptyStr = Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]
Indicator = Literal["info", "warning", "critical"]
# How urgent each indicator is, most urgent first (CDS Hooks 2.0.1: critical, warning, info).
URGENCY: dict[str, int] = {"critical": 0, "warning": 1, "info": 2}
SUMMARY_MAX = 140  # "<140 characters" in the spec


def _prune(value: Any) -> Any:
    """Drop None and empty containers recursively (the spec forbids both); items of a list
    are pruned, never dropped."""
    if isinstance(value, dict):
        pruned = {}
        # Only containers are walked: a call per text was most of a card's wire time.
        for k, v in value.items():
            if isinstance(v, dict | list):
                v = _prune(v)
                if not v:
                    continue
            elif v is None:
                continue
            pruned[k] = v
        return pruned
    if isinstance(value, list):
        return [_prune(v) if isinstance(v, dict | list) else v for v in value]
    return value


class WireModel(BaseModel):
    """Base for wire models: strict about what arrives, tidy about what leaves."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=False)

    def wire(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        pruned = _prune(data)
        assert isinstance(pruned, dict)
        return pruned


# --- Request -----------------------------------------------------------------


class FhirAuthorization(WireModel):
    """``fhirAuthorization``: an OAuth 2.0 bearer token for ``fhirServer``."""

    model_config = ConfigDict(extra="allow", hide_input_in_errors=True)

    access_token: NonEmptyStr
    token_type: Literal["Bearer"]
    expires_in: int = Field(ge=0)
    scope: NonEmptyStr
    subject: NonEmptyStr
    patient: str | None = None

    def __repr__(self) -> str:  # never print the token
        return "FhirAuthorization(access_token=<redacted>)"

    __str__ = __repr__


class HookRequest(WireModel):
    """The body of ``POST {baseUrl}/cds-services/{id}``."""

    model_config = ConfigDict(extra="allow", hide_input_in_errors=True)

    hook: NonEmptyStr
    hookInstance: NonEmptyStr
    fhirServer: AnyHttpUrl | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _authorization_needs_server(self) -> HookRequest:
        if self.fhirAuthorization is not None and self.fhirServer is None:
            raise ValueError("fhirAuthorization requires fhirServer")
        return self

    @property
    def fhir_server_base(self) -> str | None:
        """``fhirServer`` without a trailing slash, as the FHIR client wants it."""
        return str(self.fhirServer).rstrip("/") if self.fhirServer is not None else None


# --- Response ----------------------------------------------------------------


class Coding(WireModel):
    """The spec's Coding: ``code`` required; ``display`` required in overrideReasons."""

    model_config = ConfigDict(extra="forbid")

    code: NonEmptyStr
    system: str | None = None
    display: str | None = None


class Source(WireModel):
    model_config = ConfigDict(extra="forbid")

    label: NonEmptyStr
    url: AnyHttpUrl | None = None
    icon: AnyHttpUrl | None = None
    topic: Coding | None = None


class Action(WireModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["create", "update", "delete"]
    description: NonEmptyStr
    resource: dict[str, Any] | None = None
    resourceId: list[str] | None = None

    @model_validator(mode="after")
    def _resource_for_create_update(self) -> Action:
        if self.type in ("create", "update") and not self.resource:
            raise ValueError(f"a {self.type} action needs a resource")
        return self


class Suggestion(WireModel):
    model_config = ConfigDict(extra="forbid")

    label: NonEmptyStr
    uuid: str | None = None
    isRecommended: bool | None = None
    actions: list[Action] | None = None


class Link(WireModel):
    model_config = ConfigDict(extra="forbid")

    label: NonEmptyStr
    url: AnyHttpUrl
    type: Literal["absolute", "smart"]
    appContext: str | None = None

    @model_validator(mode="after")
    def _app_context_only_on_smart(self) -> Link:
        if self.appContext is not None and self.type != "smart":
            raise ValueError("appContext is only allowed on smart links")
        return self


class Card(WireModel):
    model_config = ConfigDict(extra="forbid")

    uuid: str | None = Field(default_factory=lambda: str(uuid_lib.uuid4()))
    summary: Annotated[str, StringConstraints(min_length=1, max_length=SUMMARY_MAX - 1)]
    detail: str | None = None
    indicator: Indicator
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[Coding] | None = None
    links: list[Link] | None = None

    @model_validator(mode="after")
    def _selection_behavior_with_suggestions(self) -> Card:
        if self.suggestions and self.selectionBehavior is None:
            raise ValueError("selectionBehavior is required when suggestions are present")
        for reason in self.overrideReasons or []:
            if not reason.display:
                raise ValueError("overrideReasons need a display")
        return self


def _fresh(value: Any) -> Any:
    """A copy of wire JSON (dicts, lists, scalars), so that a caller may change what it got."""
    if isinstance(value, dict):
        return {k: _fresh(v) if isinstance(v, dict | list) else v for k, v in value.items()}
    if isinstance(value, list):
        return [_fresh(v) if isinstance(v, dict | list) else v for v in value]
    return value


ModelT = TypeVar("ModelT", bound=WireModel)


class WireTemplate(Generic[ModelT]):
    """A wire model validated once, for the models that differ from it only in the fields
    ``filled`` per call (a card's uuid, evidence line and suggestions; the rest comes from the
    content). :meth:`fill` makes such a model without validating it again (the caller gives
    values of the fields' types), and :meth:`wire` gives what its ``wire()`` gives, from the
    other fields' wire form made once. ``items`` wires the models in a filled list the same
    way (a card's suggestions, a suggestion's actions).
    """

    __slots__ = ("_blob", "_filled", "_items", "_names", "_shared", "_values", "model")

    def __init__(
        self,
        model: ModelT,
        filled: Collection[str],
        items: Mapping[str, WireTemplate[Any]] | None = None,
    ) -> None:
        fields = type(model).model_fields
        unknown = set(filled) - set(fields)
        if unknown:
            raise ValueError(f"no such fields: {sorted(unknown)}")
        self.model = model
        self._filled = frozenset(filled)
        self._items = dict(items or {})
        wire = model.wire()
        # The wire keys in the order model_dump gives them; the others' values, in that order.
        self._names = tuple(name for name in fields if name in self._filled or name in wire)
        self._shared = tuple(name for name in fields if name not in self._filled)
        values = [wire[name] for name in self._names if name not in self._filled]
        # Each model gets its own copy of them: parsing them again in C is several times faster
        # than copying them in Python, for values that come back the same (checked here).
        try:
            blob: bytes | None = orjson.dumps(values)
        except TypeError:
            blob = None
        if blob is not None and repr(orjson.loads(blob)) != repr(values):
            blob = None
        self._blob = blob
        self._values = values

    def fill(self, **values: Any) -> ModelT:
        """The template's model with these values in its filled fields."""
        unknown = set(values) - self._filled
        if unknown:
            raise ValueError(f"not filled per call: {sorted(unknown)}")
        return self.model.model_copy(update=values)

    def wire(self, model: WireModel) -> dict[str, Any] | None:
        """What ``model.wire()`` gives, for a model filled from this template (or a copy of
        one with other filled values); None for a model whose other fields are not the
        template's own."""
        if type(model) is not type(self.model):
            return None
        mine, theirs = self.model.__dict__, model.__dict__
        for name in self._shared:
            if theirs[name] is not mine[name]:
                return None
        values = iter(orjson.loads(self._blob) if self._blob else _fresh(self._values))
        data: dict[str, Any] = {}
        for name in self._names:
            if name not in self._filled:
                data[name] = next(values)
                continue
            value = theirs[name]
            if value is None:
                continue
            if type(value) not in _PLAIN:
                value = self._wire_filled(model, name, value)
                if value is None:
                    continue
            data[name] = value
        return data

    def _wire_filled(self, model: WireModel, name: str, value: Any) -> Any:
        """A filled field's wire form: its items wired by ``items``, else JSON that has nothing
        to prune copied through orjson, else dumped and pruned as ``wire()`` does (None when
        pruned away)."""
        item = self._items.get(name)
        if item is not None and isinstance(value, list) and value:
            wired = [item.wire(v) for v in value]
            if all(w is not None for w in wired):
                return wired
        elif isinstance(value, dict | list):
            try:
                blob = orjson.dumps(value, option=_ONLY_JSON, default=_refuse)
            except TypeError:
                blob = b""
            # Compact JSON without null, [] or {} anywhere (in a text, too) has nothing to prune.
            if blob and b"null" not in blob and b"[]" not in blob and b"{}" not in blob:
                return orjson.loads(blob)
        dumped = model.model_dump(mode="json", by_alias=True, exclude_none=True, include={name})
        return _prune(dumped).get(name)


# Values a field has on the wire as they are; orjson writes everything else that it writes
# itself differently from pydantic (datetimes, dataclasses, subclasses): left to pydantic.
_PLAIN = (str, bool, int)
_ONLY_JSON = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def _refuse(value: Any) -> Any:
    raise TypeError


class CdsResponse(WireModel):
    model_config = ConfigDict(extra="forbid")

    cards: list[Card] = Field(default_factory=list)
    systemActions: list[Action] | None = None

    def wire(self) -> dict[str, Any]:
        data = super().wire()
        data["cards"] = [card.wire() for card in self.cards]  # always present, may be []
        return data


# --- Discovery ---------------------------------------------------------------


class ServiceDescriptor(WireModel):
    model_config = ConfigDict(extra="forbid")

    hook: NonEmptyStr
    title: str | None = None
    description: NonEmptyStr
    id: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")]
    prefetch: dict[str, str] | None = None
    usageRequirements: str | None = None


class Discovery(WireModel):
    model_config = ConfigDict(extra="forbid")

    services: list[ServiceDescriptor]

    def wire(self) -> dict[str, Any]:
        return {"services": [s.wire() for s in self.services]}


# --- Feedback ----------------------------------------------------------------


class AcceptedSuggestion(WireModel):
    id: NonEmptyStr


# Feedback is bounded: a post carries the outcomes of the cards a clinician saw (a response has at
# most CDS_MAX_CARDS), so these caps leave room for an EHR that batches, and no more. A comment
# is a short free text and may hold patient data: it is kept short and deleted with its row.
MAX_FEEDBACK_ITEMS = 100
MAX_COMMENT_CHARS = 400
# A card uuid the service issues is a sealed token (plugin/storage/token.py): about 190
# characters for the cards of the shipped content, 770 at most.
MAX_CARD_UUID_CHARS = 1024
MAX_ACCEPTED_SUGGESTIONS = 20


class OverrideReason(WireModel):
    reason: Coding | None = None
    userComment: str | None = Field(default=None, max_length=MAX_COMMENT_CHARS)


class FeedbackItem(WireModel):
    card: Annotated[NonEmptyStr, StringConstraints(max_length=MAX_CARD_UUID_CHARS)]
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = Field(
        default=None, max_length=MAX_ACCEPTED_SUGGESTIONS
    )
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: NonEmptyStr

    @field_validator("outcomeTimestamp")
    @classmethod
    def _iso_instant(cls, value: str) -> str:
        from datetime import datetime

        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError("outcomeTimestamp must be an ISO 8601 instant") from exc
        return value

    @model_validator(mode="after")
    def _outcome_fields(self) -> FeedbackItem:
        if self.outcome == "accepted" and self.overrideReason is not None:
            raise ValueError("overrideReason is only allowed when the outcome is overridden")
        if self.outcome == "overridden" and self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is only allowed when the outcome is accepted")
        return self


class Feedback(WireModel):
    feedback: list[FeedbackItem] = Field(min_length=1, max_length=MAX_FEEDBACK_ITEMS)
