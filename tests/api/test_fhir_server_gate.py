"""The FHIR test server gate: skip locally without node_modules, fail in CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import fhirserver


@pytest.fixture
def no_node_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fhirserver, "SERVER_DIR", tmp_path)


@pytest.mark.usefixtures("no_node_modules")
def test_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        fhirserver.require_server()


@pytest.mark.usefixtures("no_node_modules")
def test_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        fhirserver.require_server()


def test_available_with_node_modules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "node_modules" / "@medplum" / "fhir-router").mkdir(parents=True)
    monkeypatch.setattr(fhirserver, "SERVER_DIR", tmp_path)
    monkeypatch.setattr(fhirserver.shutil, "which", lambda _name: "/usr/bin/node")
    assert fhirserver.server_available() is None
    monkeypatch.setattr(fhirserver.shutil, "which", lambda _name: None)
    assert fhirserver.server_available() == "node is not installed"
