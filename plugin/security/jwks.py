"""Trusted CDS clients and their JWK sets.

The file named by ``CDS_TRUSTED_CLIENTS`` lists each issuer (``iss``) the
service trusts and where its public keys are: inline (``jwks``), in a file
(``jwks_file``, relative to the clients file) or at a URL (``jku``). Only the
URLs configured here are ever fetched: a ``jku`` in a token header selects one
of them and is never followed on its own (fetching whatever URL a token names
would let anyone sign their own tokens).

Fetched key sets are cached for ``CDS_JWKS_CACHE_SECONDS``; an unknown ``kid``
triggers a refresh, but no URL is fetched more than once a minute, so a stream
of forged ``kid`` values cannot turn the service into a request amplifier.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

log = logging.getLogger(__name__)

Jwk = Mapping[str, Any]
KeysByKid = Mapping[str, Jwk]
Fetch = Callable[[str], Any]

MIN_REFRESH_SECONDS = 60.0
FETCH_TIMEOUT_SECONDS = (3.0, 5.0)  # (connect, read)
MAX_JWKS_BYTES = 256 * 1024
# Members of a JWK that only a private key has: a trusted-clients file holding one
# is a leaked signing key, refused rather than silently used.
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class KeySetError(ValueError):
    """A key set (configured or fetched) is not a usable public JWK set."""


@dataclass(frozen=True, slots=True)
class TrustedClient:
    iss: str
    keys: KeysByKid
    jku: tuple[str, ...] = ()
    tenant: str | None = None


def keys_by_kid(data: Any, where: str) -> dict[str, Jwk]:
    """Index a JWK set ``{"keys": [...]}`` by ``kid``; ``where`` names it in errors."""
    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
        raise KeySetError(f"{where}: a JWK set needs a 'keys' list")
    found: dict[str, Jwk] = {}
    for index, key in enumerate(data["keys"]):
        if not isinstance(key, Mapping):
            raise KeySetError(f"{where}: keys[{index}] is not an object")
        kid = key.get("kid")
        if not isinstance(kid, str) or not kid:
            raise KeySetError(f"{where}: keys[{index}] has no 'kid'")
        if PRIVATE_MEMBERS & key.keys():
            raise KeySetError(f"{where}: keys[{index}] contains private key material")
        if key.get("use", "sig") != "sig":
            continue  # an encryption key never verifies a signature
        if kid in found:
            raise KeySetError(f"{where}: kid {kid!r} appears twice")
        found[kid] = dict(key)
    return found


def _check_jku(url: Any, where: str) -> str:
    if not isinstance(url, str):
        raise KeySetError(f"{where}: 'jku' must be a URL string")
    parts = urlsplit(url)
    loopback = parts.hostname in {"localhost", "127.0.0.1", "::1"}
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise KeySetError(f"{where}: 'jku' must be an https URL")
    return url


def _client(entry: Any, index: int, base: Path) -> TrustedClient:
    where = f"clients[{index}]"
    if not isinstance(entry, Mapping):
        raise KeySetError(f"{where} is not an object")
    iss = entry.get("iss")
    if not isinstance(iss, str) or not iss:
        raise KeySetError(f"{where}: 'iss' is required")
    keys: dict[str, Jwk] = {}
    if "jwks" in entry:
        keys.update(keys_by_kid(entry["jwks"], f"{where}.jwks"))
    if "jwks_file" in entry:
        path = base / str(entry["jwks_file"])
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise KeySetError(f"{where}: cannot read jwks_file {path}: {exc}") from None
        for kid, key in keys_by_kid(data, f"{where}.jwks_file").items():
            if kid in keys:
                raise KeySetError(f"{where}: kid {kid!r} appears twice")
            keys[kid] = key
    raw_jku = entry.get("jku")
    jku_list = raw_jku if isinstance(raw_jku, list) else [] if raw_jku is None else [raw_jku]
    jku = tuple(_check_jku(url, where) for url in jku_list)
    if not keys and not jku:
        raise KeySetError(f"{where}: give 'jwks', 'jwks_file' or 'jku'")
    tenant = entry.get("tenant")
    if tenant is not None and (not isinstance(tenant, str) or not tenant):
        raise KeySetError(f"{where}: 'tenant' must be a non-empty string")
    return TrustedClient(iss=iss, keys=keys, jku=jku, tenant=tenant)


def load_trusted_clients(path: str | Path | None) -> dict[str, TrustedClient]:
    """Read the trusted clients file; an empty path trusts nobody."""
    if not path:
        return {}
    file = Path(path).expanduser()
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KeySetError(f"CDS_TRUSTED_CLIENTS: cannot read {file}: {exc}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("clients"), list):
        raise KeySetError(f"CDS_TRUSTED_CLIENTS: {file} needs a 'clients' list")
    clients: dict[str, TrustedClient] = {}
    for index, entry in enumerate(data["clients"]):
        client = _client(entry, index, file.parent)
        if client.iss in clients:
            raise KeySetError(f"clients[{index}]: iss {client.iss!r} appears twice")
        clients[client.iss] = client
    return clients


def fetch_jwks(url: str) -> Any:
    """GET a JWK set: no redirects (the URL is the one configured), bounded size and time."""
    with requests.get(
        url,
        timeout=FETCH_TIMEOUT_SECONDS,
        allow_redirects=False,
        headers={"Accept": "application/json"},
        stream=True,
    ) as response:
        if response.status_code != 200:
            raise KeySetError(f"{url}: HTTP {response.status_code}")
        body = response.raw.read(MAX_JWKS_BYTES + 1, decode_content=True)
    if len(body) > MAX_JWKS_BYTES:
        raise KeySetError(f"{url}: key set larger than {MAX_JWKS_BYTES} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise KeySetError(f"{url}: not JSON") from None


@dataclass(slots=True)
class _Cached:
    keys: KeysByKid
    fetched_at: float


class KeySetCache:
    """Key sets fetched from configured ``jku`` URLs, shared by the threads of one worker."""

    def __init__(
        self,
        ttl_seconds: float,
        fetch: Fetch = fetch_jwks,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.ttl_seconds = ttl_seconds
        self._fetch = fetch
        self._clock = clock
        self._cached: dict[str, _Cached] = {}
        self._last_attempt: dict[str, float] = {}
        # One lock for all URLs: fetches are rare (at most one a minute per URL) and
        # bounded by the timeout, and it keeps concurrent misses from fetching twice.
        self._lock = threading.Lock()

    def find(self, url: str, kid: str) -> Jwk | None:
        """The key ``kid`` from the set at ``url``, fetching it when stale or unknown."""
        with self._lock:
            now = self._clock()
            cached = self._cached.get(url)
            if cached is None or now - cached.fetched_at >= self.ttl_seconds:
                cached = self._refresh(url, now) or cached
            if cached is not None and kid in cached.keys:
                return cached.keys[kid]
            # An unknown kid may mean the client rotated its keys: look again, rate-limited.
            refreshed = self._refresh(url, now)
            return refreshed.keys.get(kid) if refreshed is not None else None

    def _refresh(self, url: str, now: float) -> _Cached | None:
        last = self._last_attempt.get(url)
        if last is not None and now - last < MIN_REFRESH_SECONDS:
            return None
        self._last_attempt[url] = now
        try:
            keys = keys_by_kid(self._fetch(url), url)
        except KeySetError as exc:
            # A stale set stays in use until a fetch succeeds.
            log.warning("JWK set fetch failed: %s", exc)
            return None
        except requests.RequestException as exc:
            log.warning("JWK set fetch failed: %s (%s)", url, type(exc).__name__)
            return None
        cached = _Cached(keys=keys, fetched_at=now)
        self._cached[url] = cached
        return cached
