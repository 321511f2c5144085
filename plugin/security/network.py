"""Where a request or a URL is: the one loopback rule and the one forwarded-for policy.

A request that a reverse proxy forwarded carries one of ``PROXY_HEADERS``; it came from
elsewhere, even when the proxy itself connects from loopback, so it is never a loopback client.
The headers' contents are not trusted either way: the service never needs the real address.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from flask import Request

# Headers a reverse proxy adds.
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")
# Their keys in the WSGI environ, where ``request.headers`` looks them up (a lookup there
# costs a fifth of one through the headers).
_PROXY_KEYS = tuple("HTTP_" + name.upper().replace("-", "_") for name in PROXY_HEADERS)
LOOPBACK_HOSTS = frozenset({"localhost", "localhost.localdomain"})


def is_loopback(host: str | None) -> bool:
    """A host name or address (IPv4, IPv6, with or without brackets) on this machine."""
    if not host:
        return False
    return _is_loopback(host)


@lru_cache(maxsize=1024)
def _is_loopback(host: str) -> bool:
    # Once per distinct peer address (a few: the EHR's hosts, the proxy), not once per call.
    host = host.strip("[]").lower()
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def from_loopback(request: Request) -> bool:
    """A request from a loopback address that no proxy forwarded."""
    environ = request.environ
    for key in _PROXY_KEYS:
        if key in environ:
            return False
    return is_loopback(request.remote_addr)
