"""The tests a document names: which exist, read from the test files without running them."""

from __future__ import annotations

import ast
import re
from pathlib import Path


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


# A reference in a document: a test function (``tests/….py::test_name``) or a golden case folder
# (``tests/cases/<service>/<case>``), in backticks.
REFERENCE = re.compile(r"`(tests/[^`\s]*)`")
TEST_REFERENCE = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)")
CASE_REFERENCE = re.compile(r"tests/cases/[\w-]+/[\w-]+")


def references(text: str) -> list[str]:
    """Every backticked ``tests/…`` reference in ``text``, in order."""
    return REFERENCE.findall(text)


def unresolved(reference: str, root: Path) -> str | None:
    """Why ``reference`` names nothing that exists under ``root``; None when it does.

    A parametrised id (``test_x[id]``) is refused: the ids exist only once pytest has
    collected the module, so this reader cannot vouch for them. Name the function, or the
    golden case folder that the parametrised test runs.
    """
    if "[" in reference:
        return f"{reference}: parametrised ids are not checked; name the function or the case"
    test = TEST_REFERENCE.fullmatch(reference)
    if test is not None:
        path = root / test.group(1)
        if not path.is_file():
            return f"{reference}: no such file"
        if test.group(2) not in defined_tests(path):
            return f"{reference}: no such test in {test.group(1)}"
        return None
    if CASE_REFERENCE.fullmatch(reference):
        folder = root / reference
        if not (folder / "request.json").is_file() or not (folder / "expected.json").is_file():
            return f"{reference}: no such golden case"
        return None
    if reference.endswith(".py") and (root / reference).is_file():
        return None  # a test file named as a whole
    return f"{reference}: neither a test (file.py::test_name) nor a golden case folder"
