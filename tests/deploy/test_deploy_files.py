"""deploy/: the environment file names only real settings, the systemd unit passes
`systemd-analyze verify`, and nginx accepts the TLS proxy configuration (`nginx -t`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from plugin.config import SETTINGS
from tests.support.paths import ROOT

DEPLOY = ROOT / "deploy"


def needs(tool: str) -> str:
    found = shutil.which(tool) or (
        f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None
    )
    if found is None:
        if os.environ.get("CI", "").lower() == "true" and tool != "systemd-analyze":
            pytest.fail(f"{tool} missing in CI")
        pytest.skip(f"{tool} is not installed")
    return found


def test_the_environment_file_sets_only_known_settings_and_never_unsigned() -> None:
    text = (DEPLOY / "mkopper-cds.env.example").read_text(encoding="utf-8")
    names = re.findall(r"^#?\s*(CDS_[A-Z0-9_]+)=", text, re.M)
    known = {s.name for s in SETTINGS}
    assert names and set(names) <= known, set(names) - known
    assert "CDS_ALLOW_UNSIGNED=" not in text
    assert re.search(r"^CDS_PUBLIC_URL=https://", text, re.M)
    assert re.search(r"^CDS_HOST=127\.0\.0\.1$", text, re.M)


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = needs("systemd-analyze")
    unit = (DEPLOY / "mkopper-cds.service").read_text(encoding="utf-8")
    # Point the unit at this checkout's command and example environment, so verify can check them.
    unit = unit.replace(
        "/opt/mkopper-cds/venv/bin/mkopper-cds", str(ROOT / ".venv/bin/mkopper-cds")
    )
    unit = unit.replace("/etc/mkopper-cds/mkopper-cds.env", str(DEPLOY / "mkopper-cds.env.example"))
    path = tmp_path / "mkopper-cds.service"
    path.write_text(unit, encoding="utf-8")
    done = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    if "Failed to" in done.stderr and "bus" in done.stderr.lower():
        pytest.skip("systemd-analyze cannot run here (no system bus)")
    assert done.returncode == 0, done.stderr


def test_nginx_accepts_the_tls_proxy_configuration(tmp_path: Path) -> None:
    nginx = needs("nginx")
    openssl = needs("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subprocess.run(
        [openssl, *request, "-subj", "/CN=cds.example.org", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    site = (DEPLOY / "nginx-mkopper-cds.conf").read_text(encoding="utf-8")
    site = site.replace("/etc/ssl/certs/cds.example.org.pem", str(cert))
    site = site.replace("/etc/ssl/private/cds.example.org.key", str(key))
    site = re.sub(
        r"listen (\[::\]:)?(80|443)", lambda m: f"listen {m.group(1) or ''}1{m.group(2)}", site
    )
    (tmp_path / "site.conf").write_text(site, encoding="utf-8")
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        "events {}\n"
        f"http {{ access_log off; include {tmp_path}/site.conf; }}\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
