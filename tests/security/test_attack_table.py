"""Every row of the attack table (docs/security.md) names a test that exists."""

from __future__ import annotations

import re

from tests.support.named_tests import defined_tests
from tests.support.paths import ROOT


def attack_rows() -> list[str]:
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    table = text.split("## Attacks and outcomes", 1)[1].split("\n## ", 1)[0]
    return [line for line in table.splitlines() if line.startswith("| ") and "`" in line]


def test_every_row_names_an_existing_test() -> None:
    rows = attack_rows()
    assert len(rows) >= 30
    missing = []
    for row in rows:
        cell = row.rstrip(" |").rsplit("|", 1)[1]
        names = re.findall(r"`(?:(tests/[\w/]+\.py)::)?(test_\w+)`", cell)
        assert names, row
        current = ROOT / "tests" / "security" / "test_auth.py"
        for file, name in names:
            if file:
                current = ROOT / file
            if name not in defined_tests(current):
                missing.append(f"{current.name}::{name}")
    assert missing == []
