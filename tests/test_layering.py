"""cds_hooks/ never imports flask or plugin (the same rule as Flask's own sansio/)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.paths import ROOT

FORBIDDEN = {"flask", "plugin", "werkzeug", "flask_cors"}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_cds_hooks_does_not_import_flask_or_plugin() -> None:
    files = sorted((ROOT / "cds_hooks").rglob("*.py"))
    assert files, "cds_hooks has no modules"
    offenders = {
        str(p.relative_to(ROOT)): sorted(imported_roots(p) & FORBIDDEN)
        for p in files
        if imported_roots(p) & FORBIDDEN
    }
    assert offenders == {}


def test_the_walk_catches_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from flask import g\n    import plugin.api.views\n")
    assert imported_roots(sample) & FORBIDDEN == {"flask", "plugin"}
