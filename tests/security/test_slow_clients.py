"""Slow and idle clients, and slow FHIR servers, against the real server (gunicorn) on loopback.

Before the fix, gthread with 2 workers x 4 threads gave each connection sending its headers
slowly a thread of its own: 8 such sockets made ``/healthz`` time out, and calls waiting on a
slow FHIR server held the same threads (48 of them put discovery at 9 s). The service must
keep answering with 200 slow or idle client connections open and while its FHIR calls wait.
Bounded: each test holds its sockets for a few seconds; the module takes about 15 s.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.support.security_requests import hook_request
from tests.support.service_process import ServiceProcess, http

SERVICE_ID = "mkopper-patient-view"
SLOW_SOCKETS = 200
BOUND_S = 2.0
WAITING_FHIR_CALLS = 16


def body(fhir_server: str | None = None) -> dict[str, Any]:
    from cds_hooks.catalog import build_registry
    from cds_hooks.knowledge import load_knowledge

    service = build_registry(load_knowledge(None)).get(SERVICE_ID)
    request = hook_request(service, "mk-confirmed-inpatient")
    if fhir_server is not None:
        request["fhirServer"] = fhir_server
        request["prefetch"] = {}
    return request


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    process = ServiceProcess(
        tmp_path_factory.mktemp("slow-clients"),
        workers=2,
        CDS_ALLOW_UNSIGNED="1",
        CDS_ALLOWED_FHIR_SERVERS=SLOW_FHIR_URL,
        CDS_PREFETCH_BUDGET_MS="4000",
        CDS_FHIR_TIMEOUT_MS="4000",
    )
    yield process
    process.stop()


class SlowFhir(BaseHTTPRequestHandler):
    """Answers nothing until the test releases it: a FHIR server that keeps calls waiting."""

    release = threading.Event()
    waiting = 0
    lock = threading.Lock()

    def do_GET(self) -> None:
        with SlowFhir.lock:
            SlowFhir.waiting += 1
        SlowFhir.release.wait(10)
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


def _slow_fhir_server() -> ThreadingHTTPServer:
    ThreadingHTTPServer.request_queue_size = 256
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowFhir)
    server.daemon_threads = True
    return server


SLOW_FHIR = _slow_fhir_server()
SLOW_FHIR_URL = f"http://127.0.0.1:{SLOW_FHIR.server_address[1]}/fhir/R4"


def timed(method: str, url: str, payload: Any = None) -> tuple[int, float]:
    started = time.perf_counter()
    status, _ = http(method, url, payload, timeout=BOUND_S + 3)
    return status, time.perf_counter() - started


def open_slow_sockets(port: int, count: int) -> list[socket.socket]:
    """Half idle (connected, nothing sent), half sending a request's headers a byte at a time."""
    sockets = []
    for index in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if index % 2:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        sockets.append(sock)
    return sockets


def dribble(sockets: list[socket.socket], stop: threading.Event) -> None:
    while not stop.wait(0.5):
        for index, sock in enumerate(sockets):
            if index % 2:
                try:
                    sock.send(b"a")
                except OSError:
                    pass


def test_healthz_and_a_cds_call_answer_with_200_slow_clients_open(
    service: ServiceProcess,
) -> None:
    sockets = open_slow_sockets(service.port, SLOW_SOCKETS)
    stop = threading.Event()
    dribbler = threading.Thread(target=dribble, args=(sockets, stop), daemon=True)
    dribbler.start()
    try:
        time.sleep(1.0)  # every socket accepted and, for the dribblers, inside its headers
        cds = f"{service.base}/cds-services/{SERVICE_ID}"
        for _ in range(3):
            status, seconds = timed("GET", f"{service.base}/healthz")
            assert status == 200 and seconds < BOUND_S, (status, seconds)
            status, seconds = timed("POST", cds, body())
            assert status == 200 and seconds < BOUND_S, (status, seconds)
    finally:
        stop.set()
        dribbler.join(timeout=2)
        for sock in sockets:
            sock.close()


def test_discovery_answers_while_calls_wait_on_a_slow_fhir_server(
    service: ServiceProcess,
) -> None:
    threading.Thread(target=SLOW_FHIR.serve_forever, daemon=True).start()
    SlowFhir.release.clear()
    calls = 48
    cds = f"{service.base}/cds-services/{SERVICE_ID}"
    try:
        with ThreadPoolExecutor(calls) as pool:
            futures = [pool.submit(timed, "POST", cds, body(SLOW_FHIR_URL)) for _ in range(calls)]
            deadline = time.monotonic() + 3
            # Each worker's prefetch pool bounds the FHIR calls in flight; the rest queue.
            while SlowFhir.waiting < WAITING_FHIR_CALLS and time.monotonic() < deadline:
                time.sleep(0.05)
            status, seconds = timed("GET", f"{service.base}/cds-services")
            assert status == 200 and seconds < BOUND_S, (status, seconds)
            status, seconds = timed("GET", f"{service.base}/healthz")
            assert status == 200 and seconds < BOUND_S, (status, seconds)
            assert SlowFhir.waiting >= WAITING_FHIR_CALLS, SlowFhir.waiting
            SlowFhir.release.set()
            for future in futures:
                future.result()
    finally:
        SlowFhir.release.set()
        SLOW_FHIR.shutdown()
        SLOW_FHIR.server_close()
