"""A misbehaving FHIR server on a real loopback socket, and a socket that counts connections.

The fault is the first path segment of the ``fhirServer`` base (``/slow``, ``/500``, ...), so a
test names its fault in the URL. Used by the prefetch fault tests and the HTTP-level ones.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from tests.support.fhir import searchset

STOP = threading.Event()
FAULTS = ("401", "403", "404", "500", "badjson", "html", "slow", "trickle", "slowheaders")


class FaultHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    other_host = ""  # set per server: where the "nextother" mode points its next link
    peers: ClassVar[set[tuple[str, int]]] = set()  # set per server: client address per request

    def log_message(self, *_: Any) -> None:  # keep the test output quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/fhir+json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, body: Any) -> None:
        self._send(status, json.dumps(body).encode())

    def do_GET(self) -> None:
        self.peers.add(self.client_address)
        mode = self.path.strip("/").split("/")[0]
        if mode in ("401", "403", "404", "500"):
            self._json(int(mode), {"resourceType": "OperationOutcome", "issue": []})
        elif mode == "badjson":
            self._send(200, b'{"resourceType": "Bundle", "entry": [')
        elif mode == "html":
            self._send(200, b"<html>login</html>", "text/html")
        elif mode == "slow":
            STOP.wait(5.0)
            self._json(200, searchset([]))
        elif mode == "trickle":
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(100):
                    if STOP.wait(0.05):
                        break
                    self.wfile.write(b" ")
                    self.wfile.flush()
            except OSError:
                pass  # the client hung up: what it should do at its deadline
        elif mode == "slowheaders":
            # Header bytes dribble in, each well inside any per-read timeout.
            try:
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                self.wfile.flush()
                for _ in range(100):
                    if STOP.wait(0.05):
                        break
                    self.wfile.write(b"a")
                    self.wfile.flush()
            except OSError:
                pass
            self.close_connection = True
        elif mode == "big":
            self._json(
                200,
                searchset(
                    [
                        {
                            "resourceType": "Condition",
                            "id": f"c{i}",
                            "subject": {"reference": "Patient/p"},
                        }
                        for i in range(5000)
                    ]
                ),
            )
        elif mode == "nextother":
            self._json(
                200,
                searchset(
                    [{"resourceType": "Condition", "id": "first"}],
                    f"{self.other_host}/nextother/Condition?page=2",
                ),
            )
        elif mode == "delay":
            STOP.wait(0.3)
            self._json(200, searchset([{"resourceType": "Condition", "id": "late"}]))
        else:
            self._json(200, searchset([{"resourceType": "Condition", "id": "ok"}]))


class AcceptRecorder:
    """A listening socket that only counts the connections it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def recorder() -> Iterator[AcceptRecorder]:
    rec = AcceptRecorder()
    try:
        yield rec
    finally:
        rec.close()


PEERS: set[tuple[str, int]] = set()


@pytest.fixture
def fault_server(recorder: AcceptRecorder) -> Iterator[str]:
    PEERS.clear()
    handler = type(
        "Handler",
        (FaultHandler,),
        {"other_host": f"http://127.0.0.1:{recorder.port}", "peers": PEERS},
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    STOP.clear()
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        STOP.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)
