"""The one loopback rule and forwarded-for policy (plugin/security/network.py)."""

from __future__ import annotations

import pytest
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from plugin.security.network import from_loopback, is_loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("localhost.evil.example", False),
        ("", False),
        (None, False),
    ],
)
def test_is_loopback(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("remote", "headers", "local"),
    [
        ("127.0.0.1", {}, True),
        ("::1", {}, True),
        ("192.0.2.7", {}, False),
        ("127.0.0.1", {"X-Forwarded-For": "127.0.0.1"}, False),
        ("127.0.0.1", {"Forwarded": "for=192.0.2.7"}, False),
        ("127.0.0.1", {"X-Real-IP": "192.0.2.7"}, False),
        # Header names in any case, and a header present but empty, as the headers find them.
        ("127.0.0.1", {"x-forwarded-for": "192.0.2.7"}, False),
        ("::1", {"X-REAL-IP": ""}, False),
        ("127.0.0.1", {"X-Forwarded-Host": "example.org"}, True),
    ],
)
def test_from_loopback(remote: str, headers: dict[str, str], local: bool) -> None:
    environ = EnvironBuilder(headers=headers, environ_base={"REMOTE_ADDR": remote}).get_environ()
    assert from_loopback(Request(environ)) is local  # type: ignore[arg-type]
