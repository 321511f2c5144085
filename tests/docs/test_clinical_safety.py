"""The hazard log (docs/clinical-safety.md): every hazard complete, every rating from the matrix,
and every test or golden case it names exists."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.named_tests import references, unresolved
from tests.support.paths import ROOT

LOG = ROOT / "docs" / "clinical-safety.md"
SEVERITIES = ("Minor", "Significant", "Considerable", "Major", "Catastrophic")
# Likelihood -> risk per severity, in the order above (the matrix DCB0129 uses).
MATRIX = {
    "Very high": (3, 4, 4, 5, 5),
    "High": (2, 3, 3, 4, 5),
    "Medium": (2, 2, 3, 3, 4),
    "Low": (1, 2, 2, 3, 4),
    "Very low": (1, 1, 2, 2, 3),
}
REQUIRED_HAZARDS = (
    "Missed case",
    "False case",
    "Wrong care setting",
    "Stale evidence",
    "Advice lost to the card cap",
    "A critical card suppressed wrongly",
    "Wrong language",
)
PARTS = ("Hazard", "Effect", "Causes", "Initial risk", "Residual risk")
RISK = re.compile(r"(\w+) × ((?:Very )?\w+) = (\d)")


@dataclass(frozen=True)
class Hazard:
    id: str
    title: str
    text: str

    def part(self, name: str) -> str:
        found = re.search(rf"^- \*\*{name}:\*\* (.+?)(?=^- \*\*|^\||\Z)", self.text, re.M | re.S)
        return found.group(1).strip() if found else ""

    def mitigations(self) -> list[str]:
        rows = [line for line in self.text.splitlines() if re.match(r"\| \d+ \|", line)]
        return rows


def hazards(text: str) -> list[Hazard]:
    body = text.split("\n## Hazards\n", 1)[1].split("\n## ", 1)[0]
    found = []
    for chunk in re.split(r"^### ", body, flags=re.M)[1:]:
        heading, _, rest = chunk.partition("\n")
        hazard_id, _, title = heading.partition(" ")
        found.append(Hazard(hazard_id, title.strip(), rest))
    return found


def risk(value: str) -> int:
    """The rating a ``Severity × Likelihood = N`` line gives, checked against the matrix."""
    match = RISK.match(value)
    assert match, f"not 'Severity × Likelihood = N': {value!r}"
    severity, likelihood, rating = match.group(1), match.group(2), int(match.group(3))
    assert severity in SEVERITIES, severity
    assert likelihood in MATRIX, likelihood
    expected = MATRIX[likelihood][SEVERITIES.index(severity)]
    assert rating == expected, f"{value!r}: the matrix gives {expected}"
    return rating


def problems(text: str, root: Path) -> list[str]:
    return [p for p in (unresolved(ref, root) for ref in references(text)) if p is not None]


LOG_TEXT = LOG.read_text(encoding="utf-8")
HAZARDS = hazards(LOG_TEXT)


def test_the_log_holds_every_required_hazard() -> None:
    titles = [hazard.title for hazard in HAZARDS]
    assert set(REQUIRED_HAZARDS) <= set(titles)
    assert [hazard.id for hazard in HAZARDS] == [f"H{n}" for n in range(1, len(HAZARDS) + 1)]


@pytest.mark.parametrize("hazard", HAZARDS, ids=lambda h: h.id)
def test_each_hazard_has_every_part_and_tested_mitigations(hazard: Hazard) -> None:
    for part in PARTS:
        assert hazard.part(part), f"{hazard.id}: no {part}"
    initial = risk(hazard.part("Initial risk"))
    residual = risk(hazard.part("Residual risk"))
    assert residual <= initial, hazard.id
    rows = hazard.mitigations()
    assert rows, f"{hazard.id}: no mitigations"
    for row in rows:
        evidence = row.rstrip(" |").rsplit("|", 1)[1]
        assert references(evidence), f"{hazard.id}: a mitigation without evidence: {row}"


def test_the_matrix_in_the_log_is_the_one_checked() -> None:
    table = LOG_TEXT.split("## Risk matrix", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells and cells[0] in MATRIX:
            rows[cells[0]] = tuple(int(cell) for cell in cells[1:])
    assert rows == MATRIX


def test_every_named_test_and_case_exists() -> None:
    named = references(LOG_TEXT)
    assert len(named) >= 60
    assert problems(LOG_TEXT, ROOT) == []


@pytest.mark.parametrize(
    ("reference", "why"),
    [
        ("`tests/api/test_lookback_window.py::test_no_such_test`", "no such test"),
        ("`tests/api/no_such_file.py::test_x`", "no such file"),
        ("`tests/cases/mkopper-patient-view/no-such-case`", "no such golden case"),
        ("`tests/cds_hooks/test_guideline_golden.py::test_golden_case[a/b]`", "parametrised"),
        ("`tests/somewhere`", "neither a test"),
    ],
)
def test_the_check_catches_a_reference_to_nothing(reference: str, why: str) -> None:
    (problem,) = problems(f"| 1 | a mitigation | {reference} |", ROOT)
    assert why in problem


def test_the_check_accepts_tests_and_cases_that_exist() -> None:
    text = (
        "`tests/api/test_lookback_window.py::test_the_window_holds_only_for_laboratory_results`, "
        "`tests/cases/mkopper-patient-view/lab-positive-41-days-inside-window`"
    )
    assert problems(text, ROOT) == []
