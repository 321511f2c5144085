"""Release hygiene: one version source, an SPDX licence with its text, locks covering pyproject."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement

from plugin.version import __version__
from tests.support.paths import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]


def pins(lock: str) -> dict[str, str]:
    found = {}
    for line in (ROOT / lock).read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line)
        if match:
            found[match.group(1).lower().replace("_", "-").replace(".", "-")] = match.group(2)
    return found


def name(requirement: str) -> str:
    return Requirement(requirement).name.lower().replace("_", "-").replace(".", "-")


def test_the_version_has_one_source() -> None:
    assert PROJECT["dynamic"] == ["version"] and "version" not in PROJECT
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "plugin.version.__version__"
    assert f"## [{__version__}]" in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")


def test_the_licence_is_spdx_with_its_full_text() -> None:
    # A TOML table for the licence gives setuptools' deprecation warning on install.
    assert PROJECT["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_every_dependency_is_bounded_and_locked() -> None:
    runtime, dev = pins("requirements.lock"), pins("requirements-dev.lock")
    for requirement in PROJECT["dependencies"]:
        specifier = Requirement(requirement).specifier
        assert any(s.operator == "<" for s in specifier), f"{requirement}: no upper bound"
        assert name(requirement) in runtime, requirement
        assert runtime[name(requirement)] == dev[name(requirement)], requirement
    for requirement in PROJECT["optional-dependencies"]["dev"]:
        assert name(requirement) in dev and name(requirement) not in runtime, requirement


def test_directly_imported_packages_are_declared() -> None:
    declared = {name(r) for r in PROJECT["dependencies"]}
    assert {"urllib3", "cryptography", "markupsafe", "fhir-core", "werkzeug"} <= declared
