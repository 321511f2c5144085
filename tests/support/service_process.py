"""The service as a real process (gunicorn, ``python -m plugin.cli.serve``) and PostgreSQL.

``ServiceProcess`` starts the service on a free loopback port with the given
settings, waits for ``/readyz`` and stops it with SIGTERM. ``postgres_url``
gives ``CDS_TEST_POSTGRES_URL`` (skip when unset; fail when ``CI=true``), and
``fresh_schema`` a URL whose connections use a new, empty schema that is
dropped afterwards, so tests never see each other's rows.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.support.paths import ROOT

READY_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw[:1] == b"{" else raw.decode()


class ServiceProcess:
    def __init__(
        self, data_dir: Path, workers: int = 2, args: tuple[str, ...] = (), **settings: str
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir / f"service-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
        env.update(CDS_DATA_DIR=str(data_dir), CDS_LOG_LEVEL="WARNING", **settings)
        self._log = self.log_path.open("w")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "plugin.cli.serve",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
                *args,
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.ready_s = self._wait_ready()

    def _wait_ready(self) -> float:
        while time.perf_counter() - self.started < READY_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        return time.perf_counter() - self.started
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"service not ready in {READY_TIMEOUT_S} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-5000:]

    def workers(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except OSError:
            return []

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode


def postgres_url() -> str:
    url = os.environ.get("CDS_TEST_POSTGRES_URL", "")
    if not url:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CDS_TEST_POSTGRES_URL is not set in CI")
        pytest.skip("CDS_TEST_POSTGRES_URL is not set (start PostgreSQL, see .ci/run)")
    return url


@contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """``url`` with its connections' search_path set to a new schema, dropped at the end."""
    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in url else "?"
    try:
        yield f"{url}{separator}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
