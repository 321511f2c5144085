"""Authentication and the body limit in the real server: gunicorn workers and processes.

The Flask test client cannot show two things: that the replay cache holds
across gunicorn workers and across separate service processes sharing one
database, and that a chunked body over the limit is refused by the server as
deployed (gunicorn terminates the input stream, which changes how Werkzeug
reads it).
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.jwt_keys import ISSUER, ec_key, rsa_key, write_trusted_clients
from tests.support.security_requests import hook_request
from tests.support.service_process import ServiceProcess

SERVICE_ID = "mkopper-patient-view"
ES384 = ec_key(kid="process-ec")
RS384 = rsa_key(kid="process-rsa")


def body() -> dict[str, Any]:
    from cds_hooks.catalog import build_registry
    from cds_hooks.knowledge import load_knowledge

    service = build_registry(load_knowledge(None)).get(SERVICE_ID)
    return hook_request(service, "mk-confirmed-inpatient")


@pytest.fixture(scope="module")
def clients_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("clients")
    keys = [ES384.public_jwk(), RS384.public_jwk()]
    return write_trusted_clients(directory, [{"iss": ISSUER, "jwks": {"keys": keys}}])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared-db")


@pytest.fixture(scope="module")
def services(data_dir: Path, clients_file: Path) -> Iterator[list[ServiceProcess]]:
    """Two service processes (two workers each) on one SQLite database file."""
    settings = {"CDS_TRUSTED_CLIENTS": str(clients_file), "CDS_ALLOW_UNSIGNED": "0"}
    first = ServiceProcess(data_dir, workers=2, **settings)
    try:
        second = ServiceProcess(data_dir, workers=2, **settings)
    except BaseException:
        first.stop()
        raise
    yield [first, second]
    first.stop()
    second.stop()


def post(
    service: ServiceProcess,
    raw: bytes,
    headers: dict[str, str],
    chunked: bool = False,
    send_at_most: int | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """POST ``raw``; ``send_at_most`` stops sending early (the answer needs only the headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    try:
        path = f"/cds-services/{SERVICE_ID}"
        all_headers = {"Content-Type": "application/json", **headers}
        if not chunked:
            all_headers["Content-Length"] = str(len(raw))
        conn.putrequest("POST", path, skip_host="Host" in all_headers)
        for name, value in all_headers.items():
            conn.putheader(name, value)
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        step = 256 * 1024
        payload = raw if send_at_most is None else raw[:send_at_most]
        try:
            for start in range(0, len(payload), step):
                piece = payload[start : start + step]
                conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
            if chunked:
                conn.send(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer 413 and close before reading it all
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def bearer(service: ServiceProcess, token_key: Any = ES384, **claims: Any) -> dict[str, str]:
    aud = f"{service.base}/cds-services/{SERVICE_ID}"
    # The service runs in its own process on its real clock: the token is issued on it too.
    claims.setdefault("now", time.time())
    return {"Authorization": f"Bearer {token_key.token(aud, **claims)}"}


def test_signed_calls_pass_in_both_processes(services: list[ServiceProcess]) -> None:
    raw = json.dumps(body()).encode()
    for service in services:
        for key in (ES384, RS384):
            status, _, text = post(service, raw, bearer(service, key))
            assert status == 200, text[:300]


def test_missing_token_is_401_with_headers(services: list[ServiceProcess]) -> None:
    status, headers, text = post(services[0], json.dumps(body()).encode(), {})
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert json.loads(text)["error"]["code"] == "unauthorized"


def test_replay_is_refused_by_every_worker_of_both_processes(
    services: list[ServiceProcess],
) -> None:
    first, second = services
    raw = json.dumps(body()).encode()
    # The same audience for both: the second process is reached under the first's
    # address by sending the first's Host header, as a load balancer would.
    headers = bearer(first, jti="replayed-across-processes")
    assert post(first, raw, headers)[0] == 200
    for _ in range(4):  # spread over both workers of each process
        assert post(first, raw, headers)[0] == 401
        status, _, _ = post(second, raw, {**headers, "Host": f"127.0.0.1:{first.port}"})
        assert status == 401


def test_chunked_body_over_the_limit_is_413_under_gunicorn(services: list[ServiceProcess]) -> None:
    service = services[0]
    raw = json.dumps(body()).encode()
    over = raw + b" " * (5 * 1024 * 1024 + 1 - len(raw))
    status, _, _ = post(service, over, bearer(service), chunked=True)
    assert status == 413
    within = raw + b" " * (1024 * 1024)
    status, _, text = post(service, within, bearer(service), chunked=True)
    assert status == 200, text[:300]


def test_declared_body_over_the_limit_is_413_under_gunicorn(services: list[ServiceProcess]) -> None:
    service = services[0]
    raw = json.dumps(body()).encode()
    over = raw + b" " * (5 * 1024 * 1024 + 1 - len(raw))
    # Refused on the declared length alone, before any of the body is read.
    status, _, _ = post(service, over, bearer(service), send_at_most=64 * 1024)
    assert status == 413


def raw_exchange(service: ServiceProcess, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as it is (no client-side checks) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, content = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, content


def assert_json_error(status: int, headers: dict[str, str], content: bytes, expected: int) -> None:
    assert status == expected, content[:300]
    assert headers["Content-Type"].startswith("application/json"), headers
    error = json.loads(content)["error"]
    assert error["status"] == expected and error["code"] and error["message"]


@pytest.mark.parametrize("size", [12 * 1024, 20 * 1024])
def test_long_token_is_answered_by_the_app_in_json(
    services: list[ServiceProcess], size: int
) -> None:
    # Over gunicorn's default 8 KB header line (HTML 431 before), under its limit here:
    # the app's own token checks answer, 401 in the one JSON shape.
    status, headers, text = post(
        services[0], json.dumps(body()).encode(), {"Authorization": "Bearer " + "a" * size}
    )
    assert status == 401, text[:300]
    assert json.loads(text)["error"]["code"] == "unauthorized"
    assert headers["WWW-Authenticate"].startswith("Bearer")


def test_header_over_the_server_limit_is_431_in_json(services: list[ServiceProcess]) -> None:
    request = (
        f"GET /cds-services HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {'a' * 40 * 1024}\r\n\r\n"
    ).encode()
    assert_json_error(*raw_exchange(services[0], request), expected=431)


def test_request_line_over_the_server_limit_is_414_in_json(
    services: list[ServiceProcess],
) -> None:
    request = f"GET /cds-services?x={'a' * 9000} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    assert_json_error(*raw_exchange(services[0], request), expected=414)


@pytest.mark.parametrize(
    "request_line",
    [
        "GET /smart/launch?iss=https%3A%2F%2Fehr.example%2Ffhir&launch={canary}\x7f HTTP/1.1",
        "GET /cds-services?patient={canary}\x01 HTTP/1.1",
    ],
)
def test_gunicorn_log_lines_carry_no_query_string(
    services: list[ServiceProcess], request_line: str
) -> None:
    service = services[0]
    canary = f"mk-log-canary-{uuid.uuid4().hex[:8]}"
    request = f"{request_line.format(canary=canary)}\r\nHost: 127.0.0.1\r\n\r\n".encode()
    status, headers, content = raw_exchange(service, request)
    time.sleep(0.2)  # the worker's log line reaches the file
    log = service.log_path.read_text()
    assert "Invalid request from" in log  # gunicorn logged the refusal ...
    assert canary not in log  # ... without the query string
    assert canary.encode() not in content
    assert_json_error(status, headers, content, expected=400)
