"""docs/examples/ and the demo request are what the golden cases give today (`make examples`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.examples import CHOSEN, EXAMPLES, build

FILES = build()


@pytest.mark.parametrize("path", sorted(FILES), ids=lambda p: p.name)
def test_example_is_fresh(path: Any) -> None:
    assert path.exists(), f"{path.name} missing: run `make examples`"
    assert path.read_text(encoding="utf-8") == FILES[path], f"{path.name} stale: `make examples`"


def test_one_request_and_response_per_hook_and_a_feedback_post() -> None:
    requests = sorted(EXAMPLES.glob("*.request.json"))
    assert len(requests) == len(CHOSEN)
    for request_path in requests:
        response_path = request_path.with_name(request_path.name.replace("request", "response"))
        assert json.loads(response_path.read_text(encoding="utf-8"))["cards"], response_path.name
    (feedback,) = json.loads((EXAMPLES / "patient-view.feedback.json").read_text())["feedback"]
    shown = json.loads((EXAMPLES / "patient-view.response.json").read_text())["cards"]
    assert feedback["card"] in {card["uuid"] for card in shown}
