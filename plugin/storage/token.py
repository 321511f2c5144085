"""Card uuids that carry their own issuance record: an encrypted, authenticated token.

A card a clinician can give feedback on gets, as its ``uuid``, what feedback needs to know about
it, sealed with AES-256-GCM (``cryptography``), so that a call writes nothing: the finding and
its kind (``source.topic`` code), the keyed patient hash and, for kinds suppressed per
encounter, the keyed encounter hash (both as :class:`~plugin.storage.suppression.PatientHasher`
computes them for the suppressions table), the m-kopper status, the override reason codes the
card offered, and the time it was issued. The service id and the verified caller (``iss`` and
``tenant``) are bound to the token as associated data: authenticated, not carried, so a token
presented to another service's feedback URL or by another caller does not open.

Layout, base64url without padding::

    version (1) | nonce (12) | AES-GCM( issued (u32 s) | flags (1) | patient hash (32)?
                                       | encounter hash (32)? | finding | kind? | status
                                       | reasons ) | tag (16)

Texts are one length byte and UTF-8. The keys are derived with HKDF-SHA256 (purpose label
:data:`PURPOSE`) from each key of the patient-hash key list: the first seals, every key opens,
so rotating CDS_PATIENT_HASH_SECRET keeps the cards issued under the old key joinable. Random
96-bit nonces allow 2**32 tokens per key before the GCM bound (about 11,000 years at a million
cards a day).

A token that does not decode, authenticate or parse, or is older than the retention, opens to
``None``: an unknown card. Only the canonical text of a token opens, so one card has one text
(feedback duplicates are found by that text).
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cds_hooks.models import MAX_CARD_UUID_CHARS

VERSION = 1
PURPOSE = b"m-kopper-cds card token v1"
NONCE_BYTES = 12
HASH_BYTES = 32
_HEADER = bytes([VERSION])
_FIXED = struct.Struct(">IB")
_PATIENT = 0x01
_ENCOUNTER = 0x02
_KIND = 0x04  # the kind differs from the finding (else it is not carried)
# Longest texts carried (the limits of the former card_subjects columns).
MAX_KEY_BYTES = 100
MAX_STATUS_BYTES = 20
MAX_REASONS_BYTES = 255


@dataclass(frozen=True, slots=True)
class CardRecord:
    """What feedback knows of a card it names: everything but ids, and no patient data."""

    finding: str
    kind: str
    # Keyed hashes (hex) as in the suppressions table; None: the call named no patient.
    patient_hash: str | None
    # The encounter hash of a kind suppressed per encounter; "" (NO_ENCOUNTER): the patient.
    encounter_hash: str
    status: str | None
    reasons: tuple[str, ...]
    issued_at: datetime


def _text(value: str, limit: int) -> bytes:
    data = value.encode("utf-8")
    while len(data) > limit:  # cut whole characters, never a UTF-8 sequence
        value = value[:-1]
        data = value.encode("utf-8")
    return bytes([len(data)]) + data


class _Reader:
    def __init__(self, data: bytes, offset: int):
        self.data = data
        self.offset = offset

    def take(self, count: int) -> bytes:
        end = self.offset + count
        if end > len(self.data):
            raise ValueError("short token")
        part = self.data[self.offset : end]
        self.offset = end
        return part

    def text(self) -> str:
        return self.take(self.take(1)[0]).decode("utf-8")


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode(token: str) -> bytes | None:
    if not token.isascii() or len(token) > MAX_CARD_UUID_CHARS:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    # The decoder skips characters outside the alphabet and ignores the unused low bits of
    # the last one: only the canonical text is the card's uuid.
    return raw if _encode(raw) == token else None


def _associated(service_id: str, caller: str) -> bytes:
    return (
        _HEADER
        + service_id.encode("utf-8", "surrogatepass")
        + b"\x1e"
        + caller.encode("utf-8", "surrogatepass")
    )


class CardTokens:
    """Seal a card's record into its uuid; open a uuid back into the record."""

    def __init__(self, keys: Sequence[bytes], retention: timedelta):
        if not keys:
            raise ValueError("at least one key is needed")
        self._ciphers = tuple(AESGCM(self._derive(key)) for key in keys)
        self.retention = retention

    @staticmethod
    def _derive(key: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=PURPOSE).derive(key)

    def seal(self, record: CardRecord, service_id: str, caller: str) -> str:
        flags = 0
        body = bytearray()
        if record.patient_hash is not None:
            flags |= _PATIENT
            body += bytes.fromhex(record.patient_hash)
            if record.encounter_hash:
                flags |= _ENCOUNTER
                body += bytes.fromhex(record.encounter_hash)
        body += _text(record.finding, MAX_KEY_BYTES)
        if record.kind != record.finding:
            flags |= _KIND
            body += _text(record.kind, MAX_KEY_BYTES)
        body += _text(record.status or "", MAX_STATUS_BYTES)
        body += _text(",".join(record.reasons), MAX_REASONS_BYTES)
        issued = max(0, min(int(record.issued_at.timestamp()), 2**32 - 1))
        plain = _FIXED.pack(issued, flags) + bytes(body)
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[0].encrypt(nonce, plain, _associated(service_id, caller))
        return _encode(_HEADER + nonce + sealed)

    def open(self, token: str, service_id: str, caller: str, now: datetime) -> CardRecord | None:
        """The record in ``token`` if this service issued it to this caller within the
        retention; ``None`` otherwise (never an exception: the text comes from the EHR)."""
        raw = _decode(token)
        if raw is None or len(raw) < 1 + NONCE_BYTES + 16 or raw[:1] != _HEADER:
            return None
        nonce, sealed = raw[1 : 1 + NONCE_BYTES], raw[1 + NONCE_BYTES :]
        associated = _associated(service_id, caller)
        for cipher in self._ciphers:
            try:
                plain = cipher.decrypt(nonce, sealed, associated)
            except InvalidTag:
                continue
            record = self._parse(plain)
            if record is None or not (now - self.retention <= record.issued_at):
                return None
            return record
        return None

    @staticmethod
    def _parse(plain: bytes) -> CardRecord | None:
        try:
            issued, flags = _FIXED.unpack_from(plain)
            reader = _Reader(plain, _FIXED.size)
            patient = reader.take(HASH_BYTES).hex() if flags & _PATIENT else None
            encounter = reader.take(HASH_BYTES).hex() if flags & _ENCOUNTER else ""
            finding = reader.text()
            kind = reader.text() if flags & _KIND else finding
            status = reader.text() or None
            reasons = tuple(code for code in reader.text().split(",") if code)
        except (struct.error, ValueError, IndexError):
            return None
        return CardRecord(
            finding=finding,
            kind=kind,
            patient_hash=patient,
            encounter_hash=encounter,
            status=status,
            reasons=reasons,
            issued_at=datetime.fromtimestamp(issued, UTC),
        )
