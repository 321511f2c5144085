"""The deployment kit in deploy/, tested as a hospital would run it.

The service runs under gunicorn on loopback behind the kit's own nginx configuration, with TLS
from a test CA; a hook is called through it with a JWT whose ``aud`` is the public https URL.
The admin dashboard's loopback rule and the SMART cookies are checked behind the proxy, and the
systemd unit is checked by ``systemd-analyze verify`` where systemd is installed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from plugin.config import SETTINGS, load_settings
from tests.support.golden import iter_cases, normalise
from tests.support.jwt_keys import ISSUER, ec_key, write_trusted_clients
from tests.support.paths import ROOT
from tests.support.service_process import ServiceProcess, free_port
from tests.support.smart_auth_server import SmartEhr

DEPLOY = ROOT / "deploy"
ENV_FILE = DEPLOY / "mkopper-cds.env"
UNIT_FILE = DEPLOY / "mkopper-cds.service"
NGINX_SITE = DEPLOY / "nginx" / "mkopper-cds.conf"
PASSWORD = "correct horse battery staple"
KEY = ec_key()


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


# --- The environment file and the unit ---------------------------------------------------------


def test_the_environment_file_names_only_settings_and_parses() -> None:
    values = read_env_file(ENV_FILE)
    known = {setting.name for setting in SETTINGS}
    assert set(values) <= known, sorted(set(values) - known)
    settings = load_settings(environ=values)
    assert settings["CDS_ALLOW_UNSIGNED"] is False
    assert settings["CDS_HOST"] == "127.0.0.1"  # behind the proxy, never on a public address
    assert str(settings["CDS_PUBLIC_URL"]).startswith("https://")
    assert settings["CDS_ALLOWED_FHIR_SERVERS"].allows("https://fhir.example.org/R4")


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    venv_bin = Path(sys.executable).parent
    unit = UNIT_FILE.read_text(encoding="utf-8")
    unit = unit.replace("/opt/mkopper-cds/bin/mkopper-cds", str(venv_bin / "mkopper-cds"))
    unit = unit.replace("/etc/mkopper-cds/mkopper-cds.env", str(ENV_FILE))
    path = tmp_path / "mkopper-cds.service"
    path.write_text(unit, encoding="utf-8")
    done = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    # Complaints about this unit name it; lines about the host's own units are not ours.
    ours = [line for line in done.stderr.splitlines() if "mkopper-cds" in line]
    assert ours == [], done.stderr
    assert "ExecStart=" in unit and "User=mkopper-cds" in unit


# --- Behind nginx ------------------------------------------------------------------------------


@dataclass
class Tls:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_tls(directory: Path, addresses: list[str]) -> Tls:
    """A test CA and a server certificate for localhost and ``addresses``."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mkopper-cds test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    tls = Tls(directory / "ca.pem", directory / "fullchain.pem", directory / "privkey.pem")
    tls.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    tls.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return tls


def other_address() -> str | None:
    """A non-loopback address of this machine, to be a client that is not on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for a UDP connect
            address: str = sock.getsockname()[0]
        except OSError:
            return None
    return None if ipaddress.ip_address(address).is_loopback else address


@dataclass
class Proxy:
    https: str
    http: str
    service: ServiceProcess
    ehr: SmartEhr
    context: ssl.SSLContext
    access_log: Path
    remote: str | None
    tls_port: int


def render_site(tls: Tls, service_port: int, http_port: int, tls_port: int, log: Path) -> str:
    site = NGINX_SITE.read_text(encoding="utf-8")
    replacements = {
        "server 127.0.0.1:8080;": f"server 127.0.0.1:{service_port};",
        "listen 80;": f"listen {http_port};",
        "listen 443 ssl;": f"listen {tls_port} ssl;",
        "/etc/ssl/mkopper-cds/fullchain.pem": str(tls.cert_file),
        "/etc/ssl/mkopper-cds/privkey.pem": str(tls.key_file),
        "/var/log/nginx/mkopper-cds.access.log": str(log),
        "server_name cds.example.org;": "server_name localhost;",
    }
    for old, new in replacements.items():
        assert old in site, old  # the test follows the kit: a changed kit fails here first
        site = site.replace(old, new)
    return site


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nginx did not listen: {log.read_text()}")


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        reason = "nginx is not installed (Debian package nginx)"
        if __import__("os").environ.get("CI", "").lower() == "true":
            pytest.fail(f"the deployment test must run in CI: {reason}")
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("deploy")
    remote = other_address()
    tls = make_tls(tmp, ["127.0.0.1", *([remote] if remote else [])])
    http_port, tls_port = free_port(), free_port()
    public = f"https://localhost:{tls_port}"
    ehr = SmartEhr("http://127.0.0.1:9/unused").start()
    clients = write_trusted_clients(tmp, [{"iss": ISSUER, "jwks": KEY.jwks()}])
    service = ServiceProcess(
        tmp / "data",
        CDS_PUBLIC_URL=public,
        CDS_TRUSTED_CLIENTS=str(clients),
        CDS_ADMIN_PASSWORD=PASSWORD,
        CDS_ALLOWED_FHIR_SERVERS=ehr.fhir_base,
    )
    ehr.register_client("mkopper-cds", f"{public}/smart/callback")
    access_log = tmp / "access.log"
    site = tmp / "site.conf"
    site.write_text(render_site(tls, service.port, http_port, tls_port, access_log))
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / name).mkdir()
        (tmp / name).chmod(0o777)
    error_log = tmp / "error.log"
    main = tmp / "nginx.conf"
    main.write_text(
        f"""daemon off;
pid {tmp}/nginx.pid;
error_log {error_log} warn;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {site};
}}
"""
    )
    tested = subprocess.run(
        [nginx, "-t", "-c", str(main), "-p", str(tmp)], capture_output=True, text=True, check=False
    )
    assert tested.returncode == 0, tested.stderr
    process = subprocess.Popen(
        [nginx, "-c", str(main), "-p", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(tls_port, process, error_log)
        context = ssl.create_default_context(cafile=str(tls.ca_file))
        yield Proxy(
            https=public,
            http=f"http://localhost:{http_port}",
            service=service,
            ehr=ehr,
            context=context,
            access_log=access_log,
            remote=remote,
            tls_port=tls_port,
        )
    finally:
        process.terminate()
        process.wait(timeout=20)
        service.stop()
        ehr.stop()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def fetch(
    proxy: Proxy,
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, bytes]:
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=proxy.context), NoRedirect()
    )
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def a_case_with_cards() -> Any:
    return next(
        case
        for case in iter_cases()
        if case.service_id == "mkopper-patient-view" and case.expected.get("cards")
    )


def test_a_hook_through_the_proxy_with_the_public_audience(proxy: Proxy) -> None:
    import json

    case = a_case_with_cards()
    url = f"{proxy.https}/cds-services/{case.service_id}"
    token = KEY.token(url, now=time.time())  # the service runs on its real clock
    status, _, raw = fetch(
        proxy,
        url,
        body=json.dumps(case.request).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    assert status == 200, raw[:500]
    assert normalise(json.loads(raw)) == case.expected


def test_the_internal_url_is_not_the_audience(proxy: Proxy) -> None:
    import json

    case = a_case_with_cards()
    internal = f"{proxy.service.base}/cds-services/{case.service_id}"
    status, headers, _ = fetch(
        proxy,
        f"{proxy.https}/cds-services/{case.service_id}",
        body=json.dumps(case.request).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {KEY.token(internal, now=time.time())}",
        },
    )
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")


def test_plain_http_is_sent_to_https(proxy: Proxy) -> None:
    status, headers, _ = fetch(proxy, f"{proxy.http}/cds-services")
    assert status == 308
    assert headers["Location"].startswith("https://localhost")


def test_the_dashboard_is_not_served_through_the_proxy(proxy: Proxy) -> None:
    import base64

    basic = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    # Direct, on loopback: served. Through nginx, even from this machine: a forwarded request.
    direct = urllib.request.Request(
        f"{proxy.service.base}/admin/feedback", headers={"Authorization": basic}
    )
    with urllib.request.urlopen(direct, timeout=30) as response:
        assert response.status == 200
    status, _, _ = fetch(proxy, f"{proxy.https}/admin/feedback", headers={"Authorization": basic})
    assert status == 403
    if proxy.remote:
        # A client on another address, through the proxy: refused as well.
        remote_url = f"https://{proxy.remote}:{proxy.tls_port}/admin/feedback"
        status, _, _ = fetch(proxy, remote_url, headers={"Authorization": basic})
        assert status == 403


def test_smart_cookies_are_secure_behind_the_proxy(proxy: Proxy) -> None:
    from urllib.parse import urlencode

    query = urlencode({"iss": proxy.ehr.fhir_base, "launch": proxy.ehr.new_launch("p1")})
    status, headers, _ = fetch(proxy, f"{proxy.https}/smart/launch?{query}")
    assert status == 302
    cookie = headers["Set-Cookie"]
    assert cookie.startswith("__Host-mkopper-smart-launch=")
    assert "Secure" in cookie
    assert "HttpOnly" in cookie
    # The proxy's access log names the path, never the query (launch ids, codes, state).
    # nginx writes the line once the response is sent, a moment after the client has it.
    deadline = time.monotonic() + 5
    while "/smart/launch" not in (logged := proxy.access_log.read_text()):
        assert time.monotonic() < deadline, logged
        time.sleep(0.05)
    assert "launch=" not in logged
    assert "iss=" not in logged
