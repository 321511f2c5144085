"""The `call` command's signing key: an ES384 key pair kept in CDS_DATA_DIR.

CDS Hooks 2.0.1 services authenticate their clients by a JWT signed with the
client's private key. The command creates the key on first use (readable by
its owner only) and signs one short-lived token per request. ``--print-trust``
prints the public half as the entry a service adds to its CDS_TRUSTED_CLIENTS
file; the issuer is derived from the key, so each installation is its own
client and a new key cannot be mistaken for the old one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from plugin.cli.http import CommandError

KEY_FILE = "cds-client-es384.pem"
ALGORITHM = "ES384"
ISSUER_PREFIX = "urn:mkopper-cds:call:"
# One call, one token: a minute is plenty and a leaked token is soon useless.
TOKEN_LIFETIME_SECONDS = 60


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def clock() -> float:
    """Seconds since 1970 on this machine's clock (a test replaces it with its own)."""
    return time.time()


class ClientKey:
    """An ES384 private key and what the service needs to know about it."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey):
        if not isinstance(private_key.curve, ec.SECP384R1):
            raise CommandError("the client key is not a P-384 key (ES384 needs one)")
        self._private_key = private_key
        self.kid = self._thumbprint()
        self.iss = ISSUER_PREFIX + self.kid[:22]

    def _thumbprint(self) -> str:
        """The RFC 7638 JWK thumbprint: stable for the key, different for any other."""
        jwk = self._bare_public_jwk()
        canonical = json.dumps(
            {name: jwk[name] for name in ("crv", "kty", "x", "y")},
            separators=(",", ":"),
            sort_keys=True,
        )
        return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())

    def _bare_public_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = ECAlgorithm.to_jwk(self._private_key.public_key(), as_dict=True)
        return jwk

    def public_jwk(self) -> dict[str, Any]:
        jwk = self._bare_public_jwk()
        jwk.update(kid=self.kid, alg=ALGORITHM, use="sig")
        return jwk

    def trust_entry(self) -> dict[str, Any]:
        """What a service adds to the ``clients`` list of its CDS_TRUSTED_CLIENTS file."""
        return {"iss": self.iss, "jwks": {"keys": [self.public_jwk()]}}

    def token(self, audience: str) -> str:
        """A JWT for one call to ``audience`` (the exact URL posted to), issued now."""
        now = int(clock())
        claims = {
            "iss": self.iss,
            "aud": audience,
            "iat": now,
            "exp": now + TOKEN_LIFETIME_SECONDS,
            "jti": str(uuid.uuid4()),
        }
        headers = {"kid": self.kid, "typ": "JWT"}
        return jwt.encode(claims, self._private_key, algorithm=ALGORITHM, headers=headers)


def _write_new(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # O_EXCL: two first calls at once must not overwrite each other's key; the
    # mode is set at creation, so the key is never readable by others, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)


def key_path(data_dir: Path) -> Path:
    return data_dir / KEY_FILE


def load_or_create(data_dir: Path) -> ClientKey:
    """The key in ``data_dir``, created on first use with mode 0600."""
    path = key_path(data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            try:
                _write_new(path)
            except FileExistsError:
                pass  # created by a concurrent first call: use that one
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise CommandError(
                f"the client key {path} is readable by others (mode {mode:o}); "
                f"run: chmod 600 {path}"
            )
        pem = path.read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot use the client key {path}: {exc.strerror}") from None
    try:
        private_key = serialization.load_pem_private_key(pem, password=None)
    except ValueError:
        raise CommandError(f"the client key {path} is not a readable PEM private key") from None
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise CommandError(f"the client key {path} is not an EC key (ES384 needs one)")
    return ClientKey(private_key)
