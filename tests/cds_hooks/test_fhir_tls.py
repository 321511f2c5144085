"""The FHIR client over real TLS: certificates are verified, a CA bundle can be given."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cds_hooks.errors import FhirUnavailable
from cds_hooks.fhir import FhirClient

TOKEN = "tls-token-16180"


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps({"resourceType": "Patient", "id": "p1"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    cert_path, key_path = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.block_on_close = False
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/fhir", cert_path
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)


def test_unknown_certificate_is_refused(tls_server: tuple[str, Path]) -> None:
    base, _ = tls_server
    with FhirClient() as client, pytest.raises(FhirUnavailable) as caught:
        client.fetch(base, "Patient/p1", TOKEN)
    assert TOKEN not in str(caught.value)


def test_ca_bundle_is_trusted(tls_server: tuple[str, Path]) -> None:
    base, cert_path = tls_server
    with FhirClient(ca_bundle=str(cert_path)) as client:
        result = client.fetch(base, "Patient/p1", TOKEN)
    assert result.resources == [{"resourceType": "Patient", "id": "p1"}]


def test_environment_ca_bundle_is_not_read(
    tls_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bundle comes from configuration, never from the process environment.
    base, cert_path = tls_server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert_path))
    with FhirClient() as client, pytest.raises(FhirUnavailable):
        client.fetch(base, "Patient/p1", TOKEN)
