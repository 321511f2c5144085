"""The tests a document names: which exist, read from the test files without running them."""

from __future__ import annotations

import ast
from pathlib import Path


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
