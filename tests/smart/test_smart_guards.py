"""The SMART launch's own outbound calls carry the FHIR client's guards, and launches are limited.

A real HTTP server on loopback plays a hostile EHR: a gzip bomb for its smart-configuration,
or one that dribbles its answer a byte at a time.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pytest
import requests
import sqlalchemy as sa
from flask import Flask

from plugin.storage.schema import smart_sessions
from tests.smart.test_smart import problem
from tests.support.clock import Clock
from tests.support.fake_services import fake_registry
from tests.support.smart_auth_server import SmartEhr

STOP = threading.Event()
UNPACKED = 1024 * 1024 * 1024  # 1 GiB of zeros


def _bomb() -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    block = b"\0" * (1024 * 1024)
    parts = [packer.compress(block) for _ in range(UNPACKED // len(block))]
    return b"".join(parts) + packer.flush()


class Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    bomb: ClassVar[bytes] = b""
    requests_seen: ClassVar[list[str]] = []

    def log_message(self, *_: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.do_GET()

    def do_GET(self) -> None:
        self.requests_seen.append(self.path)
        mode = self.path.strip("/").split("/")[0]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if mode == "bomb":
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(self.bomb)))
            self.end_headers()
            try:
                self.wfile.write(self.bomb)
            except OSError:
                pass
        else:  # dribble: one byte a second, each well inside a per-read timeout
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(60):
                    if STOP.wait(1.0):
                        break
                    self.wfile.write(b" ")
                    self.wfile.flush()
            except OSError:
                pass


@pytest.fixture(scope="module")
def hostile() -> Iterator[str]:
    Hostile.bomb = _bomb()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        STOP.set()
        server.shutdown()
        server.server_close()
        STOP.clear()


def test_the_bomb_is_what_the_attack_used() -> None:
    body = Hostile.bomb or _bomb()
    assert len(body) < 1_100_000  # about 1 MB on the wire
    unpacker = zlib.decompressobj(31)
    assert unpacker.decompress(body, 4096) == b"\0" * 4096  # it is gzip of zeros


def test_a_gzip_bomb_smart_configuration_fails_fast_in_bounded_memory(
    make_app: Any, hostile: str
) -> None:
    iss = f"{hostile}/bomb/fhir"
    app = make_app(CDS_REGISTRY=fake_registry(), CDS_ALLOWED_FHIR_SERVERS=iss)
    tracemalloc.start()
    began = time.monotonic()
    response = app.test_client().get("/smart/launch", query_string={"iss": iss, "launch": "x"})
    elapsed = time.monotonic() - began
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert response.status_code == 502
    assert problem(response) == "fhir-unavailable"
    assert peak < 16 * 1024 * 1024  # was 3.3 GB: the cap holds after decompression
    assert elapsed < 5.0


def test_a_dribbling_smart_configuration_is_cut_at_the_deadline(
    make_app: Any, hostile: str
) -> None:
    iss = f"{hostile}/dribble/fhir"
    app = make_app(CDS_REGISTRY=fake_registry(), CDS_ALLOWED_FHIR_SERVERS=iss)
    began = time.monotonic()
    response = app.test_client().get("/smart/launch", query_string={"iss": iss, "launch": "x"})
    elapsed = time.monotonic() - began
    assert response.status_code == 502
    assert problem(response) == "fhir-unavailable"
    assert elapsed < 7.0  # the 5 s budget; held a launch for 40 s before


def _rows(app: Flask) -> int:
    with app.extensions["cds_store"].engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(smart_sessions)).scalar())


def test_launches_are_rate_limited_per_address_without_rows_or_calls(
    clocked_smart_app: Flask, ehr: SmartEhr, clock: Clock
) -> None:
    app = clocked_smart_app
    client = app.test_client()
    limit = app.extensions["smart_launch_limit"].limit
    for n in range(limit):
        query = {"iss": ehr.fhir_base, "launch": f"l{n}"}
        assert client.get("/smart/launch", query_string=query).status_code == 302
    rows = _rows(app)
    refused = client.get("/smart/launch", query_string={"iss": ehr.fhir_base, "launch": "more"})
    assert refused.status_code == 429
    assert problem(refused) == "rate-limited"
    assert int(refused.headers["Retry-After"]) >= 1
    assert _rows(app) == rows  # nothing written
    standalone = client.get("/smart/standalone", query_string={"iss": ehr.fhir_base})
    assert standalone.status_code == 429
    other = client.get(
        "/smart/launch",
        query_string={"iss": ehr.fhir_base, "launch": "other"},
        environ_base={"REMOTE_ADDR": "10.0.0.7"},
    )
    assert other.status_code == 302  # another address has its own count
    clock.now += timedelta(seconds=61)
    again = client.get("/smart/launch", query_string={"iss": ehr.fhir_base, "launch": "later"})
    assert again.status_code == 302
    # One smart-configuration fetch served every launch (cached per issuer).
    assert ehr.configuration_requests == 1


def test_the_smart_configuration_is_cached_for_a_short_time(make_app: Any, ehr: SmartEhr) -> None:
    clock = Clock()
    app = make_app(
        CDS_REGISTRY=fake_registry(), CDS_ALLOWED_FHIR_SERVERS=ehr.fhir_base, CDS_CLOCK=clock
    )
    client = app.test_client()
    for n in range(3):
        query = {"iss": ehr.fhir_base, "launch": f"c{n}"}
        assert client.get("/smart/launch", query_string=query).status_code == 302
    assert ehr.configuration_requests == 1
    clock.now += timedelta(minutes=6)
    assert (
        client.get("/smart/launch", query_string={"iss": ehr.fhir_base, "launch": "c9"}).status_code
        == 302
    )
    assert ehr.configuration_requests == 2


@pytest.mark.parametrize("mode", ["bomb", "dribble"])
def test_a_hostile_token_endpoint_fails_the_callback_in_time(
    make_app: Any, ehr: SmartEhr, hostile: str, mode: str
) -> None:
    app = make_app(CDS_REGISTRY=fake_registry(), CDS_ALLOWED_FHIR_SERVERS=ehr.fhir_base)
    client = app.test_client()
    configuration = {
        "authorization_endpoint": f"{ehr.base_url}/authorize",
        "token_endpoint": f"{hostile}/{mode}/token",
    }
    app.extensions["smart_configurations"].put(ehr.fhir_base, configuration)
    launch = client.get(
        "/smart/launch", query_string={"iss": ehr.fhir_base, "launch": ehr.new_launch("p1")}
    )
    assert launch.status_code == 302
    authorize = requests.get(launch.headers["Location"], allow_redirects=False, timeout=10)
    callback = urlsplit(authorize.headers["Location"])
    tracemalloc.start()
    began = time.monotonic()
    response = client.get(f"{callback.path}?{callback.query}")
    elapsed = time.monotonic() - began
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert response.status_code == 502
    assert problem(response) == "authorization-failed"
    assert elapsed < 7.0
    assert peak < 16 * 1024 * 1024
