"""Wire models follow CDS Hooks 2.0.1: no nulls, no empties, the required rules enforced."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cds_hooks.models import (
    Action,
    Card,
    CdsResponse,
    Coding,
    FeedbackItem,
    HookRequest,
    Link,
    Source,
    Suggestion,
)


def card(**changes: object) -> Card:
    fields: dict[str, object] = {"summary": "s", "indicator": "info", "source": Source(label="x")}
    fields.update(changes)
    return Card(**fields)  # type: ignore[arg-type]


def test_empty_response_keeps_cards_list() -> None:
    assert CdsResponse().wire() == {"cards": []}


def test_optional_fields_are_omitted_not_null_or_empty() -> None:
    wire = card(links=[], suggestions=None, detail=None).wire()
    assert set(wire) == {"uuid", "summary", "indicator", "source"}


def test_summary_must_be_under_140_characters() -> None:
    card(summary="x" * 139)
    with pytest.raises(ValidationError):
        card(summary="x" * 140)


def test_suggestions_require_selection_behavior() -> None:
    suggestion = Suggestion(
        label="Registrer",
        actions=[
            Action(type="create", description="d", resource={"resourceType": "Communication"})
        ],
    )
    with pytest.raises(ValidationError, match="selectionBehavior"):
        card(suggestions=[suggestion])
    assert (
        card(suggestions=[suggestion], selectionBehavior="any").wire()["selectionBehavior"] == "any"
    )


def test_override_reasons_need_display() -> None:
    with pytest.raises(ValidationError, match="display"):
        card(overrideReasons=[Coding(code="x", system="urn:s")])


def test_app_context_only_on_smart_links() -> None:
    with pytest.raises(ValidationError):
        Link(label="l", url="https://example.org", type="absolute", appContext="x")  # type: ignore[arg-type]
    assert (
        Link(
            label="l",
            url="https://example.org",
            type="smart",  # type: ignore[arg-type]
            appContext="x",
        ).appContext
        == "x"
    )


def test_create_action_needs_resource() -> None:
    with pytest.raises(ValidationError):
        Action(type="create", description="d")


def test_fhir_authorization_needs_fhir_server_and_hides_token() -> None:
    auth = {
        "access_token": "SECRET-TOKEN",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "cds",
    }
    with pytest.raises(ValidationError) as info:
        HookRequest(hook="patient-view", hookInstance="1", context={}, fhirAuthorization=auth)  # type: ignore[arg-type]
    assert "SECRET-TOKEN" not in str(info.value)
    request = HookRequest(
        hook="patient-view",
        hookInstance="1",
        context={},
        fhirServer="https://fhir.example.org/r4/",  # type: ignore[arg-type]
        fhirAuthorization=auth,
    )  # type: ignore[arg-type]
    assert "SECRET-TOKEN" not in repr(request)
    assert request.fhir_server_base == "https://fhir.example.org/r4"


def test_feedback_outcome_rules() -> None:
    with pytest.raises(ValidationError):
        FeedbackItem(
            card="c",
            outcome="accepted",
            outcomeTimestamp="2026-01-01T00:00:00Z",
            overrideReason={"userComment": "x"},
        )  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        FeedbackItem(card="c", outcome="overridden", outcomeTimestamp="yesterday")
