"""docs/examples/ is what the service answers today: regenerate it when a card changes."""

from __future__ import annotations

import subprocess
import sys

from tests.support.paths import ROOT


def test_examples_are_current() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "make_examples.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (
        f"{done.stdout}{done.stderr}\nrun: python tools/make_examples.py, and review the diff"
    )


def test_every_hook_has_an_example() -> None:
    names = {path.name for path in (ROOT / "docs" / "examples").glob("*.json")}
    hooks = [
        "patient-view",
        "encounter-start",
        "appointment-book",
        "order-select",
        "order-sign",
        "encounter-discharge",
        "problem-list-item-create",
    ]
    for hook in hooks:
        assert {f"{hook}.request.json", f"{hook}.response.json"} <= names
    assert "feedback.request.json" in names
