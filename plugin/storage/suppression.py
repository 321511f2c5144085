"""Feedback that changes behaviour: an overridden card stays away for a while.

When a clinician overrides a card with a reason whose content entry has
``suppress_hours`` > 0, the same kind of card (same ``source.topic`` code) is
not shown again for the same patient (and the same encounter, for kinds the
content marks per encounter) until that time has passed. Accepting the
suggestion of a card whose finding has ``accept_suppresses_as`` does the same as
that override reason. Kinds bound to the m-kopper status (notification,
isolation) come back at once when the status changes, e.g. suspected → confirmed.

To know at feedback time which patient a card belonged to, the card's uuid is a
token (``plugin.storage.token``) sealing a keyed hash (HMAC-SHA256) of the
patient id and, for kinds suppressed per encounter, of the encounter id, never
the ids themselves; a call writes nothing. Both hashes are scoped: the patient
hash covers the verified caller (``iss``, and ``tenant`` where configured) and
the ``fhirServer`` with the id, so two EHRs (or two hospitals whose ids collide)
never share a suppression; and feedback on a card is applied only when it comes
from the caller the card was issued to (the token opens for that caller only),
with an override reason the card offered. The key is CDS_PATIENT_HASH_SECRET
(comma-separated: the first hashes new records and seals new cards, the others
are still recognised, so the secret can be rotated), or a random key generated
once and kept in CDS_DATA_DIR. Suppressions are in the database, read once per
call with a patient, so every instance over one database suppresses the same
cards. Expired records are deleted on write.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask, current_app
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from cds_hooks.errors import StorageError
from cds_hooks.fhir import normalise_base
from cds_hooks.knowledge import Knowledge, Language
from cds_hooks.models import FeedbackItem, HookRequest
from cds_hooks.services import Evaluation, Fitted, Fitter, IssuedCard, cut_to
from plugin.config import data_dir
from plugin.storage.issued import IssuedCounts
from plugin.storage.schema import suppressions
from plugin.storage.store import Clock, Joined, Store, utcnow
from plugin.storage.token import CardRecord, CardTokens

# Feedback comes while the card is on screen, or later from an EHR's retry queue; a card's
# token opens this long after it was issued, then no more (later feedback is an unknown card).
SUBJECT_RETENTION = timedelta(days=7)
KEY_FILE = "patient-hash.key"
MIN_SECRET_LENGTH = 32
# An empty encounter hash: a record for the whole patient (or a call without an encounter).
NO_ENCOUNTER = ""


def _active_suppressions(keys: int) -> tuple[sa.Select[Any], tuple[str, ...]]:
    """The active suppressions of one patient hashed under any of ``keys`` keys, and the
    names of its patient hash parameters.

    One plain parameter per key rather than an expanding IN, whose values are rendered into
    the compiled statement again on every call (half the read's time); the kinds are matched
    in Python, over the patient's few rows."""
    names = tuple(f"patient_hash_{index}" for index in range(keys))
    hashes: list[sa.BindParameter[str]] = [sa.bindparam(name) for name in names]
    return (
        sa.select(suppressions.c.kind, suppressions.c.encounter_hash, suppressions.c.status).where(
            suppressions.c.patient_hash.in_(hashes)
            if keys > 1
            else suppressions.c.patient_hash == hashes[0],
            suppressions.c.expires_at > sa.bindparam("now"),
        ),
        names,
    )


class ActiveRead:
    """The one read of a call: a patient's active suppressions as (kind, encounter hash,
    status) rows.

    Compiled once for the engine's dialect and run on the pool's DBAPI connection: a
    ``Connection`` (its transaction, execution context and result) took half of the read's
    time (35 µs, 16 µs without). The pool still pings the connection at checkout and rolls it
    back on return; values are bound as the columns' types bind them."""

    def __init__(self, engine: Engine, keys: int):
        self.engine = engine
        statement, self._names = _active_suppressions(keys)
        dialect = engine.dialect
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        # The parameters' order for a positional paramstyle (SQLite), else None (named).
        self._positions = compiled.positiontup
        self._bind_now = suppressions.c.expires_at.type.dialect_impl(dialect).bind_processor(
            dialect
        )
        self._errors: tuple[type[Exception], ...] = (SQLAlchemyError, dialect.loaded_dbapi.Error)

    def __call__(self, patient_hashes: Sequence[str], now: datetime) -> list[tuple[Any, ...]]:
        values: dict[str, Any] = dict(zip(self._names, patient_hashes, strict=True))
        values["now"] = self._bind_now(now) if self._bind_now else now
        parameters: Any = (
            values if self._positions is None else [values[name] for name in self._positions]
        )
        try:
            # Closing the pool's connection hands it back to the pool.
            with (
                contextlib.closing(self.engine.raw_connection()) as connection,
                contextlib.closing(connection.cursor()) as cursor,
            ):
                cursor.execute(self.sql, parameters)
                return [tuple(row) for row in cursor.fetchall()]
        except self._errors as exc:
            raise StorageError() from exc


_EXPIRED = suppressions.delete().where(suppressions.c.expires_at <= sa.bindparam("now"))


def card_kind(item: IssuedCard) -> str:
    """The kind of a card: its source.topic code, else the finding it was rendered from."""
    return item.kind[:100]


# --- The keyed hash -------------------------------------------------------------------------


class PatientHasher:
    """HMAC-SHA256 of ids under the current key; older keys are still recognised."""

    def __init__(self, keys: Sequence[bytes]):
        if not keys:
            raise ValueError("at least one key is needed")
        self._keys = tuple(keys)

    @property
    def keys(self) -> tuple[bytes, ...]:
        """The keys, current first (card tokens derive their own keys from them)."""
        return self._keys

    def _digest(self, key: bytes, domain: str, value: str) -> str:
        # The domain keeps a patient id and an encounter id with the same text apart.
        message = f"{domain}\x1f{value}".encode()
        return hmac.new(key, message, hashlib.sha256).hexdigest()

    def hash(self, domain: str, value: str) -> str:
        return self._digest(self._keys[0], domain, value)

    def candidates(self, domain: str, value: str) -> list[str]:
        return [self._digest(key, domain, value) for key in self._keys]


def load_or_create_key(path: Path) -> bytes:
    """The key kept in ``path``; created once (0600) when absent, safe against a racing worker."""
    if not path.exists():
        temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(secrets.token_hex(32) + "\n")
            # link() fails when another worker won the race; its key is then the one kept.
            with contextlib.suppress(FileExistsError):
                os.link(temp, path)
        finally:
            temp.unlink(missing_ok=True)
    key = path.read_text(encoding="ascii").strip()
    if len(key) < MIN_SECRET_LENGTH:
        raise ValueError(f"the key file {KEY_FILE} in CDS_DATA_DIR is too short")
    return key.encode("ascii")


def hasher_from_settings(settings: Mapping[str, Any]) -> PatientHasher:
    secrets_list: list[str] = settings["CDS_PATIENT_HASH_SECRET"]
    if secrets_list:
        if any(len(secret) < MIN_SECRET_LENGTH for secret in secrets_list):
            raise ValueError(
                "setting CDS_PATIENT_HASH_SECRET: each secret needs "
                f"{MIN_SECRET_LENGTH} characters or more"
            )
        return PatientHasher([secret.encode("utf-8") for secret in secrets_list])
    return PatientHasher([load_or_create_key(data_dir(settings) / KEY_FILE)])


# --- What the content says --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    """Which override reasons suppress and for how long; which kinds are per encounter."""

    # override reason code -> hours the card stays away (0 or absent: no suppression)
    reason_hours: Mapping[str, int]
    # findings whose suppression holds for one encounter only
    per_encounter: frozenset[str] = frozenset()
    # findings that come back when the m-kopper status changes; None: every finding
    status_bound: frozenset[str] | None = None
    # override reason code -> display text, and card kind -> topic text, for the dashboard
    reason_labels: Mapping[str, str] | None = None
    kind_labels: Mapping[str, str] | None = None
    # finding -> the override reason whose suppression accepting its suggestion makes
    accept_reasons: Mapping[str, str] | None = None

    def accept_reason_for(self, finding: str) -> str | None:
        return (self.accept_reasons or {}).get(finding)

    def hours_for(self, reason_code: str | None) -> int:
        return self.reason_hours.get(reason_code or "", 0)

    def is_per_encounter(self, finding: str) -> bool:
        return finding in self.per_encounter

    def is_status_bound(self, finding: str) -> bool:
        return self.status_bound is None or finding in self.status_bound


def policy_from_knowledge(knowledge: Knowledge, language: Language = "nb") -> Policy:
    """Read the policy from the loaded guideline content."""
    content = knowledge.content
    reasons = content.override_reasons
    findings = content.findings
    per_encounter = frozenset(key for key, f in findings.items() if f.suppress_per_encounter)
    # A status change is a new clinical situation: a kind comes back when it changes unless
    # the content says otherwise (resurface_on_status_change = false).
    status_bound = frozenset(
        key for key, f in findings.items() if f.resurface_on_status_change is not False
    )
    return Policy(
        reason_hours={code: int(reason.suppress_hours) for code, reason in reasons.items()},
        per_encounter=per_encounter,
        status_bound=status_bound,
        reason_labels={code: reason.display.get(language) for code, reason in reasons.items()},
        kind_labels={key: finding.topic.get(language) for key, finding in findings.items()},
        accept_reasons={
            key: finding.accept_suppresses_as
            for key, finding in findings.items()
            if finding.accept_suppresses_as
        },
    )


# --- The records ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subject:
    patient: str | None
    encounter: str | None
    status: str | None
    # Who asked (caller_key) and which FHIR server the ids belong to: part of every hash.
    caller: str = ""
    fhir_server: str = ""

    def scoped(self, value: str) -> str:
        return f"{self.caller}\x1e{self.fhir_server}\x1e{value}"


def caller_key(caller: Any) -> str:
    """The verified caller as one text: ``iss`` and ``tenant``; empty for an unsigned call."""
    if caller is None:
        return ""
    return f"{caller.iss}\x1f{caller.tenant or ''}"


# A deployment's calls name a few FHIR servers: each is read once, not on every call (11 µs).
@lru_cache(maxsize=256)
def _server_key(url: str) -> str:
    # A call without fetching may carry a fhirServer the allowlist never had to read.
    try:
        return normalise_base(url)
    except ValueError:
        return url


def subject_of(request: HookRequest, evaluation: Evaluation, caller: Any = None) -> Subject:
    def text(key: str) -> str | None:
        value = request.context.get(key)
        return str(value) if isinstance(value, str | int) and str(value) else None

    fhir_server = _server_key(str(request.fhirServer)) if request.fhirServer else ""
    return Subject(
        text("patientId"),
        text("encounterId"),
        evaluation.status,
        caller=caller_key(caller),
        fhir_server=fhir_server,
    )


class Suppressions:
    """Suppression state in the service's database (shared by every instance), and the card
    tokens that let feedback find a card's subject without a write per call."""

    def __init__(
        self,
        engine: Engine,
        hasher: PatientHasher,
        policy: Policy,
        clock: Clock = utcnow,
        counts: IssuedCounts | None = None,
    ):
        self.engine = engine
        self.hasher = hasher
        self.clock = clock
        self.policy = policy
        self.tokens = CardTokens(hasher.keys, SUBJECT_RETENTION)
        self.counts = counts
        self._active = ActiveRead(engine, len(hasher.keys))

    def _scopes(self, finding: str, subject: Subject) -> set[str]:
        if subject.encounter is None or not self.policy.is_per_encounter(finding):
            return {NO_ENCOUNTER}
        return set(self.hasher.candidates("encounter", subject.scoped(subject.encounter)))

    def issue(
        self,
        service_id: str,
        hook_instance: str,
        subject: Subject,
        issued: Sequence[IssuedCard],
        limit: int | None = None,
        fit: Fitter = cut_to,
    ) -> Fitted:
        """Drop the cards suppressed for this subject, fit the rest under ``limit`` (most
        urgent first, as given; ``fit`` may merge related advice before it cuts), and give
        each card kept a uuid that carries its record (finding, kind, the subject's hashes,
        status, the reasons offered; ``hook_instance`` is not kept).

        One read (the active suppressions; none without a patient) and no write: the cards
        shown are counted in memory and written behind (``plugin.storage.issued``)."""
        if not issued:
            return Fitted([])
        now = self.clock()
        patient_hash: str | None = None
        if subject.patient is None:
            fitted = fit(issued, limit)
        else:
            patient_hashes = self.hasher.candidates("patient", subject.scoped(subject.patient))
            patient_hash = patient_hashes[0]
            active = self._active(patient_hashes, now)
            # Most patients have no active suppression: no card's scopes to hash then.
            shown = (
                [item for item in issued if not self._suppressed(item, subject, active)]
                if active
                else list(issued)
            )
            fitted = fit(shown, limit)
        kept = self._seal(service_id, subject, patient_hash, fitted.issued, now)
        if self.counts is not None and kept:
            self.counts.add(
                now.astimezone(UTC).date(),
                service_id,
                [(item.finding, card_kind(item)) for item in kept],
            )
        return replace(fitted, issued=kept)

    def _suppressed(
        self, item: IssuedCard, subject: Subject, active: Sequence[tuple[Any, ...]]
    ) -> bool:
        kind = card_kind(item)
        scopes = self._scopes(item.finding, subject)
        status_bound = self.policy.is_status_bound(item.finding)
        return any(
            row_kind == kind
            and encounter_hash in scopes
            and (not status_bound or status == subject.status)
            for row_kind, encounter_hash, status in active
        )

    def _seal(
        self,
        service_id: str,
        subject: Subject,
        patient_hash: str | None,
        kept: Sequence[IssuedCard],
        now: datetime,
    ) -> list[IssuedCard]:
        """The cards with their records sealed into their uuids (a card without one keeps
        none: feedback cannot name it)."""
        encounter_hash: str | None = None
        sealed: list[IssuedCard] = []
        for item in kept:
            if not item.uuid:
                sealed.append(item)
                continue
            scope = NO_ENCOUNTER
            if (
                patient_hash is not None
                and subject.encounter is not None
                and self.policy.is_per_encounter(item.finding)
            ):
                if encounter_hash is None:
                    encounter_hash = self.hasher.hash(
                        "encounter", subject.scoped(subject.encounter)
                    )
                scope = encounter_hash
            record = CardRecord(
                finding=item.finding,
                kind=card_kind(item),
                patient_hash=patient_hash,
                encounter_hash=scope,
                status=subject.status,
                reasons=item.reasons,
                issued_at=now,
            )
            token = self.tokens.seal(record, service_id, subject.caller)
            sealed.append(item.with_uuid(token))
        return sealed

    def join(
        self, service_id: str, items: Iterable[FeedbackItem], caller: Any = None
    ) -> list[Joined]:
        """Each feedback item with the record its card's uuid opens to for this service and
        caller (None: an unknown card: not issued here to this caller, altered, or too old)."""
        now = self.clock()
        key = caller_key(caller)
        opened: dict[str, CardRecord | None] = {}
        joined: list[Joined] = []
        for item in items:
            if item.card not in opened:
                opened[item.card] = self.tokens.open(item.card, service_id, key, now)
            joined.append(Joined(item, opened[item.card]))
        return joined

    def reason_for(self, joined: Joined) -> str | None:
        """The override reason whose suppression this feedback makes, if any: an override
        with a reason the card offered, or an accepted suggestion on a card whose finding
        the content says accepting suppresses as a reason does."""
        item, card = joined.item, joined.card
        if card is None:
            return None
        if item.outcome == "overridden":
            reason = item.overrideReason.reason if item.overrideReason else None
            if reason is None or reason.code not in card.reasons:
                return None
            return reason.code
        if item.outcome == "accepted" and item.acceptedSuggestions:
            return self.policy.accept_reason_for(card.finding)
        return None

    def suppress(self, conn: sa.Connection, recorded: Sequence[Joined], now: datetime) -> int:
        """In the feedback's transaction: a suppression for each item stored now whose reason
        suppresses (:meth:`reason_for`); return how many were made."""
        made: list[tuple[CardRecord, str, int]] = []
        for joined in recorded:
            reason = self.reason_for(joined)
            hours = self.policy.hours_for(reason)
            if joined.card is None or joined.card.patient_hash is None or hours <= 0:
                continue
            made.append((joined.card, reason or "", hours))
        # Expired suppressions go on every feedback write.
        conn.execute(_EXPIRED, {"now": now})
        for card, reason, hours in made:
            assert card.patient_hash is not None
            scope = card.encounter_hash if self.policy.is_per_encounter(card.finding) else ""
            key = (
                suppressions.c.patient_hash == card.patient_hash,
                suppressions.c.encounter_hash == scope,
                suppressions.c.kind == card.kind,
            )
            # The latest feedback decides, also when it shortens an earlier suppression.
            conn.execute(suppressions.delete().where(*key))
            conn.execute(
                suppressions.insert().values(
                    patient_hash=card.patient_hash,
                    encounter_hash=scope,
                    kind=card.kind[:100],
                    status=card.status[:20] if card.status else None,
                    reason=reason[:100],
                    created_at=now,
                    expires_at=now + timedelta(hours=hours),
                )
            )
        return len(made)

    def purge(self) -> int:
        """Delete expired suppressions; return rows deleted."""
        try:
            with self.engine.begin() as conn:
                gone = conn.execute(_EXPIRED, {"now": self.clock()})
        except SQLAlchemyError as exc:
            raise StorageError() from exc
        return int(gone.rowcount or 0)

    def active_count(self) -> int:
        with self.engine.connect() as conn:
            count = conn.execute(
                sa.select(sa.func.count())
                .select_from(suppressions)
                .where(suppressions.c.expires_at > self.clock())
            ).scalar_one()
        return int(count)


def get_suppressions() -> Suppressions:
    suppression: Suppressions = current_app.extensions["cds_suppression"]
    return suppression


def get_issued_counts() -> IssuedCounts:
    counts: IssuedCounts = current_app.extensions["cds_issued_counts"]
    return counts


def init_app(app: Flask, policy: Policy) -> None:
    """Attach the suppression state, under the policy read from the app's one content, and
    the counts of cards shown."""
    store: Store = app.extensions["cds_store"]
    counts = IssuedCounts(store.engine)
    app.extensions["cds_issued_counts"] = counts
    app.extensions["cds_suppression"] = Suppressions(
        store.engine, hasher_from_settings(app.config), policy, clock=store.clock, counts=counts
    )
