"""Server-side state of the SMART launch: pending launches and page sessions.

The browser holds only an opaque random value (the OAuth ``state`` in the URL,
or the session id in a cookie). The database row is keyed by the SHA-256 of
that value and its payload is encrypted with a key derived from it, so the
table alone reveals neither the access token nor the patient in context: a
copy of the database is useless without the browser's cookie. Rows live in
the database (not in process memory) so that any gunicorn worker or instance
can serve the next request of the same launch.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from cds_hooks.errors import StorageError
from plugin.storage.schema import smart_sessions
from plugin.storage.store import Clock, utcnow

PENDING = "pending"
ACTIVE = "active"
MAX_SECRET_CHARS = 256


def new_secret() -> str:
    """An opaque value with 256 bits of entropy (state, session id, binding nonce)."""
    return secrets.token_urlsafe(32)


def _key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _cipher(secret: str) -> Fernet:
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"mkopper-cds smart session"
    ).derive(secret.encode("utf-8"))
    return Fernet(base64.urlsafe_b64encode(key))


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class SessionStore:
    def __init__(self, engine: Engine, clock: Clock = utcnow):
        self.engine = engine
        self.clock = clock

    def put(self, secret: str, kind: str, data: dict[str, Any], ttl_seconds: int) -> None:
        """Store ``data`` under ``secret`` for ``ttl_seconds``; expired rows are purged."""
        now = self.clock()
        token = _cipher(secret).encrypt(json.dumps(data, separators=(",", ":")).encode())
        try:
            with self.engine.begin() as conn:
                conn.execute(smart_sessions.delete().where(smart_sessions.c.expires_at < now))
                conn.execute(
                    smart_sessions.insert().values(
                        key_hash=_key_hash(secret),
                        kind=kind,
                        payload=token.decode("ascii"),
                        expires_at=now + timedelta(seconds=ttl_seconds),
                    )
                )
        except SQLAlchemyError as exc:
            raise StorageError() from exc

    def get(self, secret: str, kind: str) -> dict[str, Any] | None:
        """The data under ``secret`` when present, of ``kind`` and not expired."""
        if not secret or len(secret) > MAX_SECRET_CHARS:
            return None
        try:
            with self.engine.connect() as conn:
                row = conn.execute(
                    sa.select(smart_sessions).where(smart_sessions.c.key_hash == _key_hash(secret))
                ).first()
        except SQLAlchemyError as exc:
            raise StorageError() from exc
        return self._open(secret, kind, row)

    def take(self, secret: str, kind: str) -> dict[str, Any] | None:
        """Like :meth:`get`, and delete the row: the value can be used once only.

        The delete decides: of two requests racing with the same value, only the
        one whose delete removed the row gets the data.
        """
        if not secret or len(secret) > MAX_SECRET_CHARS:
            return None
        key = _key_hash(secret)
        try:
            with self.engine.begin() as conn:
                row = conn.execute(
                    sa.select(smart_sessions).where(smart_sessions.c.key_hash == key)
                ).first()
                if row is None:
                    return None
                deleted = conn.execute(
                    smart_sessions.delete().where(smart_sessions.c.key_hash == key)
                ).rowcount
        except SQLAlchemyError as exc:
            raise StorageError() from exc
        if deleted != 1:
            return None
        return self._open(secret, kind, row)

    def drop(self, secret: str) -> None:
        if not secret or len(secret) > MAX_SECRET_CHARS:
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    smart_sessions.delete().where(smart_sessions.c.key_hash == _key_hash(secret))
                )
        except SQLAlchemyError as exc:
            raise StorageError() from exc

    def _open(self, secret: str, kind: str, row: Any) -> dict[str, Any] | None:
        if row is None or row.kind != kind or _as_utc(row.expires_at) <= self.clock():
            return None
        try:
            data = json.loads(_cipher(secret).decrypt(row.payload.encode("ascii")))
        except (InvalidToken, ValueError):
            return None
        return data if isinstance(data, dict) else None
