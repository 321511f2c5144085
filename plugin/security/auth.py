"""Caller authentication: the CDS Hooks 2.0.1 JWT that proves which EHR is calling.

Every service and feedback call (and discovery when
``CDS_REQUIRE_AUTH_DISCOVERY=1``) carries ``Authorization: Bearer <JWT>``,
signed by a client listed in ``CDS_TRUSTED_CLIENTS``. The checks, in order:
the token parses; ``alg`` is one of ``CDS_JWT_ALGORITHMS`` (never ``none`` or
HMAC); ``iss`` is trusted; a ``jku`` in the header is one configured for that
issuer; the ``kid`` names a key of that issuer; the signature verifies; ``aud``
is the exact URL called; ``exp``, ``iat`` and ``jti`` are present, ``exp`` is
not past and ``iat`` not ahead, each within 60 s of clock skew; and the
``jti`` has not been seen before (the replay cache lives in the database, so
it holds across workers and instances).

Every refusal is an ``Unauthorized`` (401) and one log line naming the reason,
never the token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from flask import Flask, Request

from cds_hooks.errors import Unauthorized
from plugin.config import as_bool, as_int, as_list
from plugin.context import this_app
from plugin.security.jwks import Jwk, KeySetCache, TrustedClient, load_trusted_clients
from plugin.security.network import from_loopback
from plugin.storage.store import Clock, utcnow

log = logging.getLogger(__name__)

# The asymmetric algorithms the spec recommends (ES384, RS384) and their 256-bit
# siblings. Nothing else can be switched on: not `none`, not HMAC (a shared secret
# cannot identify a client), not algorithms no CDS client is known to use.
SUPPORTED_ALGORITHMS = frozenset({"ES256", "ES384", "RS256", "RS384"})
EC_CURVES = {"ES256": "P-256", "ES384": "P-384"}
CLOCK_SKEW_SECONDS = 60
# CDS Hooks tokens authenticate one call; a token valid for longer than this is
# refused so that a leaked one is useless soon and the replay cache stays small.
MAX_LIFETIME_SECONDS = 3600
MAX_TOKEN_CHARS = 16 * 1024
MAX_JTI_CHARS = 255

RememberJti = Callable[[str, datetime], bool]


@dataclass(frozen=True, slots=True)
class Caller:
    """The EHR a verified call came from."""

    iss: str
    tenant: str | None = None


class Rejected(Exception):
    """Why a token was refused: ``reason`` goes to the log, ``public`` to the caller."""

    def __init__(self, reason: str, public: str = "The JWT is not valid."):
        super().__init__(reason)
        self.reason = reason
        self.public = public


UNTRUSTED = "The JWT is not signed by a trusted CDS client."


def parse_algorithms(value: Any) -> frozenset[str]:
    """``CDS_JWT_ALGORITHMS`` as a set; anything unsupported stops the service at start."""
    names = frozenset(as_list(value))
    unsupported = names - SUPPORTED_ALGORITHMS
    if unsupported or not names:
        allowed = ", ".join(sorted(SUPPORTED_ALGORITHMS))
        got = ", ".join(sorted(names)) or "(empty)"
        raise ValueError(f"CDS_JWT_ALGORITHMS may only list {allowed}; got {got}")
    return names


def _public_key(jwk: Jwk, alg: str) -> jwt.PyJWK:
    """The verification key, bound to the header's ``alg`` only when the key fits it."""
    declared = jwk.get("alg")
    if declared is not None and declared != alg:
        raise Rejected(f"key is for {declared!r}, token says {alg!r}", UNTRUSTED)
    family = "EC" if alg.startswith("ES") else "RSA"
    if jwk.get("kty") != family:
        raise Rejected(f"key type {jwk.get('kty')!r} cannot verify {alg}", UNTRUSTED)
    if family == "EC" and jwk.get("crv") != EC_CURVES[alg]:
        raise Rejected(f"curve {jwk.get('crv')!r} cannot verify {alg}", UNTRUSTED)
    try:
        return jwt.PyJWK(dict(jwk), algorithm=alg)
    except jwt.PyJWTError as exc:
        raise Rejected(f"unusable key ({type(exc).__name__})", UNTRUSTED) from None


class Authenticator:
    """Verifies CDS client JWTs against the trusted clients."""

    def __init__(
        self,
        clients: Mapping[str, TrustedClient],
        algorithms: frozenset[str],
        key_sets: KeySetCache,
        clock: Clock = utcnow,
    ):
        self.clients = clients
        self.algorithms = algorithms
        self.key_sets = key_sets
        # exp and iat are checked against the service's one clock (the one storage reads).
        self.clock = clock

    def verify(self, token: str, audience: str, remember_jti: RememberJti) -> Caller:
        """Check ``token`` for a call to ``audience``; raise :class:`Rejected` on any fault."""
        if len(token) > MAX_TOKEN_CHARS:
            raise Rejected("token too long", "The JWT is malformed.")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Rejected(
                f"malformed token ({type(exc).__name__})", "The JWT is malformed."
            ) from None

        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise Rejected(
                f"algorithm {str(alg)[:20]!r} not accepted",
                "The JWT's signing algorithm is not accepted.",
            )
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise Rejected("typ is not JWT", "The JWT is malformed.")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Rejected("no kid in header", "The JWT header needs a 'kid'.")

        iss = unverified.get("iss")
        client = self.clients.get(iss) if isinstance(iss, str) else None
        if client is None:
            raise Rejected(f"unknown iss {str(iss)[:100]!r}", UNTRUSTED)

        key = _public_key(self._find_key(client, header, kid), alg)
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=audience,
                issuer=client.iss,
                options={
                    "require": ["iss", "aud", "exp", "iat", "jti"],
                    "enforce_minimum_key_length": True,
                    # Checked below against the service's clock rather than PyJWT's.
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise Rejected(
                f"aud is not {audience!r} (iss {client.iss!r})",
                "The JWT's 'aud' is not the URL called.",
            ) from None
        except jwt.InvalidSignatureError:
            raise Rejected(
                f"bad signature (iss {client.iss!r}, kid {kid[:64]!r})", UNTRUSTED
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise Rejected(
                f"missing claim {exc.claim!r} (iss {client.iss!r})",
                f"The JWT lacks the '{exc.claim}' claim.",
            ) from None
        except jwt.PyJWTError as exc:
            raise Rejected(f"invalid ({type(exc).__name__}, iss {client.iss!r})") from None

        self._check_tenant(client, claims)
        expires_at = self._check_times(client, claims, self.clock().timestamp())
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
            raise Rejected(
                f"jti not a usable string (iss {client.iss!r})", "The JWT's 'jti' is not valid."
            )
        if not remember_jti(f"{client.iss}|{jti}", expires_at):
            raise Rejected(f"replayed jti (iss {client.iss!r})", "The JWT has already been used.")
        tenant = claims.get("tenant")
        return Caller(iss=client.iss, tenant=tenant if isinstance(tenant, str) else client.tenant)

    def _find_key(self, client: TrustedClient, header: Mapping[str, Any], kid: str) -> Jwk:
        jku = header.get("jku")
        if jku is not None and jku in client.jku:
            found = self.key_sets.find(jku, kid)
        elif jku is not None and not client.keys:
            raise Rejected(f"jku not on the allowlist for iss {client.iss!r}", UNTRUSTED)
        elif jku is not None:
            # A client trusted by a pinned key set (jwks / jwks_file) is verified with those
            # keys whatever URL its header names; that URL is never fetched. This is how a
            # service without outbound internet trusts a client that always sends a jku.
            found = client.keys.get(kid)
        else:
            found = client.keys.get(kid)
            for url in client.jku:
                if found is not None:
                    break
                found = self.key_sets.find(url, kid)
        if found is None:
            raise Rejected(f"unknown kid {kid[:64]!r} for iss {client.iss!r}", UNTRUSTED)
        return found

    @staticmethod
    def _check_tenant(client: TrustedClient, claims: Mapping[str, Any]) -> None:
        if client.tenant is not None and claims.get("tenant") != client.tenant:
            raise Rejected(
                f"tenant does not match (iss {client.iss!r})",
                "The JWT's 'tenant' is not the one trusted for this client.",
            )

    @staticmethod
    def _check_times(client: TrustedClient, claims: Mapping[str, Any], now: float) -> datetime:
        """exp not past, iat and nbf not ahead (each within the clock skew), exp not too far
        ahead; the time until which the jti must be remembered."""
        times: dict[str, int] = {}
        for name in ("exp", "iat", "nbf"):
            value = claims.get(name)
            if value is None and name == "nbf":
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise Rejected(
                    f"{name} is not an integer (iss {client.iss!r})",
                    f"The JWT's '{name}' must be an integer (seconds since 1970).",
                )
            times[name] = value
        if times["exp"] <= now - CLOCK_SKEW_SECONDS:
            raise Rejected(f"expired (iss {client.iss!r})", "The JWT has expired.")
        if max(times["iat"], times.get("nbf", times["iat"])) > now + CLOCK_SKEW_SECONDS:
            raise Rejected(
                f"issued in the future (iss {client.iss!r})",
                "The JWT is not yet valid; check the client's clock.",
            )
        if times["exp"] - now > MAX_LIFETIME_SECONDS:
            raise Rejected(
                f"exp more than {MAX_LIFETIME_SECONDS} s ahead (iss {client.iss!r})",
                "The JWT is valid for too long.",
            )
        # Kept until the token could no longer pass the exp check anyway.
        return datetime.fromtimestamp(times["exp"] + CLOCK_SKEW_SECONDS, tz=UTC)


def expected_audience(request: Request, public_url: str) -> str:
    """The exact URL called: ``CDS_PUBLIC_URL`` + path behind a proxy, else as received."""
    if public_url:
        return public_url.rstrip("/") + request.path
    return request.base_url


def init_app(app: Flask) -> None:
    """Read the trust settings once; a broken setting stops the service at start."""
    algorithms = parse_algorithms(app.config["CDS_JWT_ALGORITHMS"])
    clients = load_trusted_clients(str(app.config["CDS_TRUSTED_CLIENTS"] or ""))
    ttl = as_int("CDS_JWKS_CACHE_SECONDS", app.config["CDS_JWKS_CACHE_SECONDS"])
    store = app.extensions["cds_store"]
    app.extensions["cds_auth"] = Authenticator(
        clients, algorithms, KeySetCache(ttl), clock=store.clock
    )
    if as_bool(app.config["CDS_ALLOW_UNSIGNED"]):
        log.warning(
            "!!! CDS_ALLOW_UNSIGNED=1: calls WITHOUT a signed JWT are accepted from loopback "
            "addresses. Development only; never run a service reachable by others like this."
        )
    elif not clients:
        log.warning("No trusted CDS clients (CDS_TRUSTED_CLIENTS): every call will be refused.")
    else:
        log.info(
            "Trusting %d CDS client(s); algorithms %s.", len(clients), ",".join(sorted(algorithms))
        )
    if clients and not app.config["CDS_PUBLIC_URL"]:
        # Without it the audience is built from the Host header, which the caller chooses:
        # a token the EHR made for another service with the same path could be replayed here.
        log.warning(
            "CDS_PUBLIC_URL is not set: the JWT audience is taken from the request's "
            "Host header. Set it in production."
        )


def authenticate(request: Request) -> Caller | None:
    """The verified caller, or ``None`` for an unsigned development call from loopback."""
    # Where ``request.headers.get("Authorization")`` finds it, without the headers' key mapping.
    header = request.environ.get("HTTP_AUTHORIZATION")
    app = this_app()
    if header is None:
        if as_bool(app.config["CDS_ALLOW_UNSIGNED"]) and from_loopback(request):
            return None
        log.warning("JWT rejected: no Authorization header")
        raise Unauthorized("A signed JWT is required (Authorization: Bearer).")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        log.warning("JWT rejected: Authorization is not a Bearer token")
        raise Unauthorized("The Authorization header must be 'Bearer <JWT>'.")

    authenticator: Authenticator = app.extensions["cds_auth"]
    audience = expected_audience(request, str(app.config["CDS_PUBLIC_URL"] or ""))
    store = app.extensions["cds_store"]
    try:
        return authenticator.verify(token, audience, store.remember_jti)
    except Rejected as exc:
        log.warning("JWT rejected: %s", exc.reason)
        raise Unauthorized(exc.public) from None
