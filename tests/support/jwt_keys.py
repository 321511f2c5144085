"""Signing keys and JWTs as a CDS client (EHR) makes them, for tests.

Keys are generated with ``cryptography`` per test session; nothing secret is
checked in. ``SigningKey.token(aud)`` gives a fresh, valid CDS Hooks JWT;
keyword arguments change or drop (``None``) any claim or header field.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.support.clock import START

ISSUER = "https://ehr.test.example"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private_key: Any = field(repr=False)

    def public_jwk(self) -> dict[str, Any]:
        public = self.private_key.public_key()
        algorithm = ECAlgorithm if self.alg.startswith("ES") else RSAAlgorithm
        jwk: dict[str, Any] = algorithm.to_jwk(public, as_dict=True)
        jwk.update(kid=self.kid, alg=self.alg, use="sig")
        return jwk

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk()]}

    def token(
        self,
        aud: str | list[str] | None,
        /,
        *,
        headers: dict[str, Any] | None = None,
        now: float | None = None,
        **claims: Any,
    ) -> str:
        """A signed JWT issued at ``now`` (default: the test clock's START, the time an app
        built by ``make_app`` reads); a claim or header field given as ``None`` is left out.
        A test of a service in its own process (on its real clock) passes ``now=time.time()``."""
        now = int(START.timestamp() if now is None else now)
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "aud": aud,
            "exp": now + 300,
            "iat": now,
            "jti": str(uuid.uuid4()),
        }
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        header: dict[str, Any] = {"typ": "JWT", "kid": self.kid}
        header.update(headers or {})
        header = {k: v for k, v in header.items() if v is not None}
        return jwt.encode(payload, self.private_key, algorithm=self.alg, headers=header)


@cache
def _ec_private(curve: str, slot: str) -> Any:
    return ec.generate_private_key(ec.SECP384R1() if curve == "P-384" else ec.SECP256R1())


@cache
def _rsa_private(slot: int) -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key(kid: str = "ec-384", alg: str = "ES384", *, slot: str = "") -> SigningKey:
    """An EC key; the same (alg, slot) gives the same key within a test session."""
    curve = "P-384" if alg == "ES384" else "P-256"
    return SigningKey(kid=kid, alg=alg, private_key=_ec_private(curve, slot))


def rsa_key(kid: str = "rsa-384", alg: str = "RS384", *, slot: int = 0) -> SigningKey:
    return SigningKey(kid=kid, alg=alg, private_key=_rsa_private(slot))


def write_trusted_clients(directory: Path, clients: list[dict[str, Any]]) -> Path:
    """Write a CDS_TRUSTED_CLIENTS file and return its path."""
    path = directory / "trusted-clients.json"
    path.write_text(json.dumps({"clients": clients}), encoding="utf-8")
    return path


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned_token(claims: dict[str, Any], header: dict[str, Any]) -> str:
    """A JWT with ``alg: none`` and an empty signature, built by hand as an attacker would."""
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(claims).encode())
    return f"{head}.{body}."
