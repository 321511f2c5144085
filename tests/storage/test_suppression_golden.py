"""Golden feedback sequences (tests/cases_feedback/*.json) through the HTTP API."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.storage.test_suppression import call, make_suppression_app, override
from tests.support.clock import Clock
from tests.support.paths import TESTS

CASES = sorted((TESTS / "cases_feedback").glob("*.json"))


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("path", CASES, ids=[path.stem for path in CASES])
def test_feedback_sequence(make_app: Any, path: Path) -> None:
    case = json.loads(path.read_text(encoding="utf-8"))
    flags = {key: case[key] for key in ("per_encounter", "status_bound") if key in case}
    steps = case["steps"]
    clock = Clock(when(steps[0]["at"]))
    client = make_suppression_app(make_app, clock, **flags).test_client()
    shown: dict[str, str] = {}  # card kind -> uuid of the latest card of that kind
    for number, step in enumerate(steps):
        clock.now = when(step["at"])
        if "call" in step:
            spec = step["call"]
            cards = call(
                client,
                spec["findings"],
                patient=spec["patient"],
                encounter=spec.get("encounter"),
                status=spec.get("status"),
            )
            assert sorted(cards) == sorted(step["expect"]), f"{path.name} step {number}"
            shown.update(cards)
        else:
            spec = step["feedback"]
            override(client, shown[spec["card"]], spec.get("reason", ""), spec["outcome"])


def test_there_are_sequences() -> None:
    assert len(CASES) >= 4
