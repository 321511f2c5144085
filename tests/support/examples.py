"""docs/examples/: a request and a response per hook and a feedback post, from the golden cases.

Run ``make examples`` (``python -m tests.support.examples``) after changing a golden case or
card content; tests/docs/test_examples.py fails while the files are stale. Each request is
the golden case's own request without ``fhirServer`` (all data is inline as prefetch, so it
works against any running service); each response is what the service's registry answers,
with card uuids made stable. The patient-view request is also packaged for
``mkopper-cds demo`` (plugin/cli/demo_request.json).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from cds_hooks.catalog import build_registry
from cds_hooks.knowledge import load_knowledge
from cds_hooks.models import CdsResponse, HookRequest
from cds_hooks.prefetch import resolve
from tests.support.golden import Case, iter_cases
from tests.support.paths import ROOT

EXAMPLES = ROOT / "docs" / "examples"
DEMO_REQUEST = ROOT / "plugin" / "cli" / "demo_request.json"
# One reviewed golden case per service: a synthetic patient for whom the service gives cards.
CHOSEN = {
    "mkopper-patient-view": "suspected-snomed-inpatient",
    "mkopper-encounter-start": "suspected-inpatient-imp",
    "mkopper-appointment-book": "suspected",
    "mkopper-order-select": "test-and-bronchoscopy-confirmed",
    "mkopper-order-sign": "mkopper-test-suspected",
    "mkopper-encounter-discharge": "confirmed",
    "mkopper-problem-list-item-create": "suspected-snomed-inpatient",
}
FEEDBACK_TIME = "2025-03-21T09:30:00Z"


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def _request(case: Case) -> dict[str, Any]:
    return {key: value for key, value in case.request.items() if key != "fhirServer"}


def _response(registry: Any, case: Case, request: dict[str, Any]) -> dict[str, Any]:
    service = registry.get(case.service_id)
    hook_request = HookRequest.model_validate(request)
    service.check_request(hook_request)
    evaluation = service.evaluate(hook_request, resolve(service, hook_request))
    wire = CdsResponse(cards=evaluation.cards).wire()
    for index, card in enumerate(wire["cards"]):
        card["uuid"] = _stable(f"{case.id}/{index}")
        for number, suggestion in enumerate(card.get("suggestions") or []):
            if "uuid" in suggestion:
                suggestion["uuid"] = _stable(f"{case.id}/{index}/suggestion/{number}")
    return wire


def _stable(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"mkopper-example/{name}"))


def _feedback(response: dict[str, Any]) -> dict[str, Any]:
    """Override the first card that offers reasons, with its first reason."""
    card = next(c for c in response["cards"] if c.get("overrideReasons"))
    return {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {"reason": card["overrideReasons"][0]},
                "outcomeTimestamp": FEEDBACK_TIME,
            }
        ]
    }


def build() -> dict[Path, str]:
    """Every example file and its text."""
    registry = build_registry(load_knowledge())
    cases = {(case.service_id, case.name): case for case in iter_cases()}
    files: dict[Path, str] = {}
    for service_id, name in CHOSEN.items():
        case = cases[(service_id, name)]
        hook = case.request["hook"]
        request = _request(case)
        response = _response(registry, case, request)
        files[EXAMPLES / f"{hook}.request.json"] = _dump(request)
        files[EXAMPLES / f"{hook}.response.json"] = _dump(response)
        if hook == "patient-view":
            files[DEMO_REQUEST] = _dump(request)
            files[EXAMPLES / "patient-view.feedback.json"] = _dump(_feedback(response))
    return files


def main() -> None:
    for path, text in build().items():
        path.write_text(text, encoding="utf-8")
        print(path.relative_to(ROOT))


if __name__ == "__main__":
    main()
