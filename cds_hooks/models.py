"""Wire models for everything CDS Hooks 2.0.1 puts on the wire.

Field names keep the specification's camelCase so the code can be grepped
against https://cds-hooks.hl7.org/2.0/. Serialise with :meth:`WireModel.wire`:
absent optional fields are omitted, never ``null`` and never empty (the spec:
"OPTIONAL JSON string and array attributes should be omitted rather than
having a null or empty value"), except ``CdsResponse.cards`` which is always
present, ``[]`` when there is nothing to say.
"""

from __future__ import annotations

import uuid as uuid_lib
from typing import Annotated, Any, Literal

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
