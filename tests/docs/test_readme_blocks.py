"""The README's marked shell blocks (`<!-- readme-test: NAME -->` before a ```sh fence) run as
written: the demo line against a running service, the tester block end to end in bash."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from typing import Any

import pytest

from tests.support.cli_support import serving
from tests.support.fhirserver import require_server
from tests.support.paths import ROOT

MARKER = re.compile(r"<!-- readme-test: ([a-z-]+) -->\n```sh\n(.*?)```", re.S)


def blocks() -> dict[str, str]:
    return dict(MARKER.findall((ROOT / "README.md").read_text(encoding="utf-8")))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def bash(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script],
        cwd=ROOT,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_readme_marks_its_blocks() -> None:
    assert set(blocks()) == {"demo", "tester"}


def test_make_demo_shows_the_cards(make_app: Any) -> None:
    lines = [line for line in blocks()["demo"].splitlines() if line.startswith("make demo")]
    assert len(lines) == 1
    with serving(make_app()) as base:
        done = bash(lines[0], {"SERVICE": base})
    assert done.returncode == 0, done.stderr
    assert "mkopper-patient-view (patient-view): 3 cards" in done.stdout


@pytest.mark.fhir_server
def test_the_tester_block_works_pasted_as_one(tmp_path: Any) -> None:
    require_server()
    fhir_port, cds_port = free_port(), free_port()
    done = bash(
        blocks()["tester"],
        {
            "TESTER_FHIR_PORT": str(fhir_port),
            "TESTER_CDS_PORT": str(cds_port),
            # This test's own settings must not leak into the block's service.
            "CDS_DATABASE_URL": "",
        },
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "mkopper-patient-view (patient-view): " in done.stdout
    assert "cards" in done.stdout and "CRITICAL" in done.stdout
    # It stopped what it started: both ports are free again.
    for port in (fhir_port, cds_port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, port
