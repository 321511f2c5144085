"""The Medplum FHIR test server (tests/fhir_server/) as a pytest fixture.

``fhir_server`` (session scope) starts ``node server.mjs`` on a free loopback
port (the server picks it and prints it), waits for the ready line, and stops
the process at the end of the session. ``fhir_store`` (function scope) empties
the store first and hands out the same server, so each test loads its own
resources.

Use it from a test module with::

    from tests.support import fhirserver

    fhir_server = fhirserver.fhir_server  # pytest fixtures, used by name
    fhir_store = fhirserver.fhir_store

or register the module once with ``pytest_plugins = ["fhirserver"]`` in the
root ``tests/conftest.py``.

Without ``node`` or ``tests/fhir_server/node_modules`` the tests marked
``fhir_server`` are skipped, except when ``CI=true``: there they fail, so a
broken CI install cannot pass silently. Install with ``npm ci`` in
``tests/fhir_server``.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import TESTS

SERVER_DIR = TESTS / "fhir_server"
READY = re.compile(r"FHIR test server ready on (http://[0-9.]+:\d+)")
START_TIMEOUT_S = 60.0


class FhirTestServer:
    """A running ``server.mjs`` process and a few helpers to load data into it."""

    def __init__(
        self,
        *,
        token: str = "",
        profiles_dir: Path | None = None,
        validate_on_write: bool = True,
        cors_origins: str = "",
    ) -> None:
        self.token = token
        self.cors_origins = cors_origins
        self.profiles_dir = profiles_dir
        self.validate_on_write = validate_on_write
        self.base_url = ""
        self._process: subprocess.Popen[str] | None = None
        self._output: list[str] = []
        self._pump: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------

    def start(self) -> FhirTestServer:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed")
        env = dict(os.environ)
        env["FHIR_TEST_PORT"] = "0"
        env["FHIR_TEST_TOKEN"] = self.token
        env["FHIR_TEST_CORS_ORIGINS"] = self.cors_origins
        env["FHIR_TEST_VALIDATE_ON_WRITE"] = "1" if self.validate_on_write else "0"
        if self.profiles_dir is not None:
            env["FHIR_TEST_PROFILES_DIR"] = str(self.profiles_dir)
        else:
            env.pop("FHIR_TEST_PROFILES_DIR", None)
        self._process = subprocess.Popen(
            [node, "server.mjs"],
            cwd=SERVER_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump(stream: Iterable[str]) -> None:
            for line in stream:
                lines.put(line)
            lines.put(None)

        assert self._process.stdout is not None
        self._pump = threading.Thread(target=pump, args=(self._process.stdout,), daemon=True)
        self._pump.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise RuntimeError(
                    "FHIR test server did not start in time:\n" + "".join(self._output)
                )
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.stop()
                raise RuntimeError("FHIR test server exited:\n" + "".join(self._output))
            self._output.append(line)
            match = READY.search(line)
            if match:
                self.base_url = match.group(1)
                return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        # The pump thread reads to EOF once the process is gone; then the pipe can be closed.
        if self._pump is not None:
            self._pump.join(timeout=10)
            self._pump = None
        if process.stdout is not None:
            process.stdout.close()

    # --- data --------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Content-Type", "application/fhir+json")
        req.add_header("Accept", "application/fhir+json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def reset(self) -> None:
        status, _ = self.request("POST", "/$reset")
        assert status == 200

    def load(self, resources: Iterable[dict[str, Any]]) -> None:
        """Store resources with their own ids, in one transaction (refused if any is invalid)."""
        entries = []
        for resource in resources:
            kind, rid = resource["resourceType"], resource.get("id")
            if rid:
                entries.append(
                    {"resource": resource, "request": {"method": "PUT", "url": f"{kind}/{rid}"}}
                )
            else:
                entries.append({"resource": resource, "request": {"method": "POST", "url": kind}})
        if not entries:
            return
        status, body = self.request(
            "POST", "/", {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        )
        if status != 200:
            raise AssertionError(f"loading resources failed ({status}): {json.dumps(body)[:2000]}")

    def validate(self, resource: dict[str, Any], profile: str | None = None) -> dict[str, Any]:
        """``$validate``: the OperationOutcome for one resource (optionally against a profile)."""
        path = "/$validate"
        if profile:
            path += "?" + urllib.parse.urlencode({"profile": profile})
        status, body = self.request("POST", path, resource)
        assert status == 200, body
        assert isinstance(body, dict)
        return body


def server_available() -> str | None:
    """Why the server cannot run here, or ``None`` when it can."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        return "tests/fhir_server/node_modules is missing (run npm ci there)"
    return None


def require_server() -> None:
    """Skip when the server cannot run, except in CI where that is a failure."""
    reason = server_available()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"FHIR test server unavailable in CI: {reason}")
    pytest.skip(reason)


_shared: FhirTestServer | None = None


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirTestServer]:
    """One FHIR test server for the whole session (no token, validation on write)."""
    global _shared
    require_server()
    if _shared is None:
        _shared = FhirTestServer().start()
    try:
        yield _shared
    finally:
        if _shared is not None:
            _shared.stop()
            _shared = None


@pytest.fixture
def fhir_store(fhir_server: FhirTestServer) -> FhirTestServer:
    """The session's FHIR test server, emptied for this test."""
    fhir_server.reset()
    return fhir_server
