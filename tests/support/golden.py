"""Golden cases: ``tests/cases/<service-id>/<case>/request.json`` + ``expected.json``.

A case is a full CDS Hooks request (prefetch as Bundles) and the normalised response a
clinician can review without reading code. :func:`normalise` drops what changes per call (uuids)
and keeps what matters: the finding (``source.topic.code``), indicator, summary, link URLs and
the resource types a suggestion would create. Reused by the FHIR-data and HTTP tests.

Every case is evaluated at one fixed time, :data:`NOW` (the test clock's start,
2026-11-25T10:00:00Z): the dates in the cases are relative to it, so a laboratory result
sits inside or outside the lookback window as the case means it to.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.clock import START, Clock
from tests.support.paths import TESTS

CASES_DIR = TESTS / "cases"
NOW = START  # 2026-11-25T10:00:00Z


def golden_clock() -> Clock:
    """The clock golden cases are evaluated with: it stands at :data:`NOW`."""
    return Clock(NOW)


@dataclass(frozen=True)
class Case:
    service_id: str
    name: str
    request: dict[str, Any]
    expected: dict[str, Any]
    path: Path
    # The guideline section the case is about (expected.json's "description"; not compared).
    description: str | None = None

    @property
    def id(self) -> str:
        return f"{self.service_id}/{self.name}"


def iter_cases(root: Path = CASES_DIR) -> Iterator[Case]:
    """Every golden case, sorted by service and name."""
    for request_path in sorted(root.glob("*/*/request.json")):
        case_dir = request_path.parent
        expected = json.loads((case_dir / "expected.json").read_text(encoding="utf-8"))
        description = expected.pop("description", None)
        yield Case(
            service_id=case_dir.parent.name,
            name=case_dir.name,
            request=json.loads(request_path.read_text(encoding="utf-8")),
            expected=expected,
            path=case_dir,
            description=description,
        )


def normalise(response: dict[str, Any]) -> dict[str, Any]:
    """The reviewable part of a CDS Hooks response (wire JSON)."""
    cards = []
    for card in response.get("cards", []):
        topic = (card.get("source") or {}).get("topic") or {}
        suggestions = [
            sorted(
                action["resource"]["resourceType"]
                for action in suggestion.get("actions") or []
                if isinstance(action.get("resource"), dict)
            )
            for suggestion in card.get("suggestions") or []
        ]
        normalised: dict[str, Any] = {
            "finding": topic.get("code"),
            "indicator": card.get("indicator"),
            "summary": card.get("summary"),
            "links": [link.get("url") for link in card.get("links") or []],
        }
        if suggestions:
            normalised["suggestions"] = suggestions
        cards.append(normalised)
    return {"cards": cards}
