"""`mkopper-cds demo` and `--version`, and the examples' feedback post, against the real app."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from plugin.cli.http import EXIT_UNAUTHORIZED, EXIT_UNREACHABLE
from plugin.version import CDS_HOOKS_VERSION, __version__
from tests.support.cli_support import run_command, serving
from tests.support.paths import ROOT

EXAMPLES = ROOT / "docs" / "examples"

NOW = datetime(2025, 3, 21, 9, 0, tzinfo=UTC)


def fixed_clock() -> datetime:
    return NOW


def test_demo_shows_the_cards_of_a_suspected_patient(make_app: Any, capsys: Any) -> None:
    expected = json.loads((EXAMPLES / "patient-view.response.json").read_text(encoding="utf-8"))
    with serving(make_app(CDS_CLOCK=fixed_clock)) as base:
        code, out, err = run_command(["demo", "--service", base], capsys)
        raw_code, raw, _ = run_command(["demo", "--service", base, "--json"], capsys)
    assert code == 0 and raw_code == 0, err
    assert f"mkopper-patient-view (patient-view): {len(expected['cards'])} cards" in out
    assert "CRITICAL" in out
    summaries = [card["summary"] for card in json.loads(raw)["cards"]]
    assert summaries == [card["summary"] for card in expected["cards"]]


def test_demo_against_a_service_that_wants_a_jwt_says_so(make_app: Any, capsys: Any) -> None:
    with serving(make_app(CDS_ALLOW_UNSIGNED="0", CDS_CLOCK=fixed_clock)) as base:
        code, _out, err = run_command(["demo", "--service", base], capsys)
    assert code == EXIT_UNAUTHORIZED
    assert "make run" in " ".join(err.split())


def test_demo_without_a_service_exits_3(capsys: Any) -> None:
    code, _out, err = run_command(["demo", "--service", "http://127.0.0.1:9"], capsys)
    assert code == EXIT_UNREACHABLE and "cannot connect" in err


def test_the_example_feedback_is_accepted_for_the_example_cards(make_app: Any) -> None:
    app = make_app(CDS_CLOCK=fixed_clock)
    client = app.test_client()
    request = json.loads((EXAMPLES / "patient-view.request.json").read_text(encoding="utf-8"))
    shown = client.post("/cds-services/mkopper-patient-view", json=request)
    assert shown.status_code == 200
    feedback = json.loads((EXAMPLES / "feedback.request.json").read_text(encoding="utf-8"))
    # The example's uuid is made stable; the service knows the uuid it really issued.
    feedback["feedback"][0]["card"] = shown.get_json()["cards"][0]["uuid"]
    answer = client.post("/cds-services/mkopper-patient-view/feedback", json=feedback)
    assert answer.status_code == 200, answer.get_json()


def test_version_names_the_package_and_the_cds_hooks_release(capsys: Any) -> None:
    with pytest.raises(SystemExit) as stop:
        run_command(["--version"], capsys)
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == (
        f"mkopper-cds {__version__} (CDS Hooks {CDS_HOOKS_VERSION})"
    )
