"""Feedback that changes behaviour: an overridden card stays away for a while.

When a clinician overrides a card with a reason whose content entry has
``suppress_hours`` > 0, the same kind of card (same ``source.topic`` code) is
not shown again for the same patient (and the same encounter, for kinds the
content marks per encounter) until that time has passed. Kinds bound to the
m-kopper status (notification, isolation) come back at once when the status
changes, e.g. suspected → confirmed.

To know at feedback time which patient a card uuid belonged to, each issued
card is recorded with a keyed hash (HMAC-SHA256) of the patient id and the
encounter id, never the ids themselves. Both are scoped: the patient hash covers
the verified caller (``iss``, and ``tenant`` where configured) and the
``fhirServer`` with the id, so two EHRs (or two hospitals whose ids collide)
never share a suppression; and feedback on a card is applied only when it comes
from the caller the card was issued to, with an override reason the card offered.
The key is CDS_PATIENT_HASH_SECRET
(comma-separated: the first hashes new records, the others are still
recognised, so the secret can be rotated), or a random key generated once and
kept in CDS_DATA_DIR. All state is in the database, so every instance over one
database suppresses the same cards. Expired records are deleted on write.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask, current_app
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from cds_hooks.errors import StorageError
from cds_hooks.fhir import normalise_base
from cds_hooks.knowledge import Knowledge, Language
from cds_hooks.models import FeedbackItem, HookRequest
from cds_hooks.services import Evaluation, Fitted, Fitter, IssuedCard, cut_to
from plugin.config import data_dir
from plugin.storage.schema import card_subjects, suppressions
from plugin.storage.store import Clock, Store, insert_issued, utcnow

# Feedback comes while the card is on screen, or later from an EHR's retry queue; a card's
# patient hash is kept this long for it, then deleted (feedback after that suppresses nothing).
SUBJECT_RETENTION = timedelta(days=7)
KEY_FILE = "patient-hash.key"
MIN_SECRET_LENGTH = 32
# An empty encounter hash: a record for the whole patient (or a call without an encounter).
NO_ENCOUNTER = ""

# Built once: a call only binds values (statement building was a tenth of a call's time).
_OLD_SUBJECTS = card_subjects.delete().where(card_subjects.c.issued_at < sa.bindparam("cutoff"))
_ACTIVE_SUPPRESSIONS = sa.select(
    suppressions.c.kind, suppressions.c.encounter_hash, suppressions.c.status
).where(
    suppressions.c.patient_hash.in_(sa.bindparam("patient_hashes", expanding=True)),
    suppressions.c.kind.in_(sa.bindparam("kinds", expanding=True)),
    suppressions.c.expires_at > sa.bindparam("now"),
)

# Called inside the transaction that decides which cards are shown, with those cards.


def offered_reasons(item: IssuedCard) -> str:
    """The override reason codes a card offered, comma-separated (feedback may use only these)."""
    codes = [reason.code for reason in item.card.overrideReasons or [] if reason.code]
    return ",".join(codes)[:255]


def card_kind(item: IssuedCard) -> str:
    """The kind of a card: its source.topic code, else the finding it was rendered from."""
    topic = item.card.source.topic
    return (topic.code if topic else item.finding)[:100]


# --- The keyed hash -------------------------------------------------------------------------


class PatientHasher:
    """HMAC-SHA256 of ids under the current key; older keys are still recognised."""

    def __init__(self, keys: Sequence[bytes]):
        if not keys:
            raise ValueError("at least one key is needed")
        self._keys = tuple(keys)

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
    """Suppression state in the service's database (shared by every instance)."""

    def __init__(
        self,
        engine: Engine,
        hasher: PatientHasher,
        policy: Policy,
        clock: Clock = utcnow,
    ):
        self.engine = engine
        self.hasher = hasher
        self.clock = clock
        self.policy = policy

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
        urgent first, as given; ``fit`` may merge related advice before it cuts), and record
        the cards kept (their uuid, finding and hook instance, and their subject's hashes),
        all in one transaction."""
        if not issued:
            return Fitted([])
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                if subject.patient is None:
                    fitted = fit(issued, limit)
                else:
                    # Write first: the transaction takes the write lock before it reads, so
                    # SQLite waits for another writer instead of failing on a stale snapshot.
                    conn.execute(_OLD_SUBJECTS, {"cutoff": now - SUBJECT_RETENTION})
                    active = conn.execute(
                        _ACTIVE_SUPPRESSIONS,
                        {
                            "patient_hashes": self.hasher.candidates(
                                "patient", subject.scoped(subject.patient)
                            ),
                            "kinds": sorted({card_kind(item) for item in issued}),
                            "now": now,
                        },
                    ).all()
                    shown = [item for item in issued if not self._suppressed(item, subject, active)]
                    fitted = fit(shown, limit)
                    self._record_subjects(conn, service_id, subject, fitted.issued, now)
                insert_issued(
                    conn,
                    service_id,
                    hook_instance,
                    self.hasher.hash("caller", subject.caller),
                    [
                        (
                            item.card.uuid or "",
                            item.finding,
                            item.card.source.topic.code if item.card.source.topic else None,
                        )
                        for item in fitted.issued
                    ],
                    now,
                )
        except SQLAlchemyError as exc:
            raise StorageError() from exc
        return fitted

    def _suppressed(self, item: IssuedCard, subject: Subject, active: Sequence[Any]) -> bool:
        kind = card_kind(item)
        scopes = self._scopes(item.finding, subject)
        status_bound = self.policy.is_status_bound(item.finding)
        return any(
            row.kind == kind
            and row.encounter_hash in scopes
            and (not status_bound or row.status == subject.status)
            for row in active
        )

    def _record_subjects(
        self,
        conn: sa.Connection,
        service_id: str,
        subject: Subject,
        kept: Sequence[IssuedCard],
        now: datetime,
    ) -> None:
        if not kept or subject.patient is None:
            return
        patient_hash = self.hasher.hash("patient", subject.scoped(subject.patient))
        encounter_hash = (
            self.hasher.hash("encounter", subject.scoped(subject.encounter))
            if subject.encounter
            else NO_ENCOUNTER
        )
        caller_hash = self.hasher.hash("caller", subject.caller)
        rows = [
            {
                "card_uuid": item.card.uuid[:64],
                "service_id": service_id[:100],
                "finding": item.finding[:100],
                "kind": card_kind(item),
                "patient_hash": patient_hash,
                "encounter_hash": encounter_hash,
                "status": subject.status[:20] if subject.status else None,
                "caller_hash": caller_hash,
                "reasons": offered_reasons(item),
                "issued_at": now,
            }
            for item in kept
            if item.card.uuid
        ]
        if rows:
            conn.execute(card_subjects.insert(), rows)

    def caller_hashes(self, caller: Any) -> list[str]:
        """The keyed hashes an issued card of this caller may carry (one per key)."""
        return self.hasher.candidates("caller", caller_key(caller))

    def apply_feedback(
        self, service_id: str, items: Iterable[FeedbackItem], caller: Any = None
    ) -> int:
        """Create a suppression for each override whose reason suppresses; return how many.

        Only a card issued to this caller counts, and only with a reason that card offered."""
        created = 0
        callers = self.caller_hashes(caller)
        for item in items:
            reason = item.overrideReason.reason if item.overrideReason else None
            hours = self.policy.hours_for(reason.code if reason else None)
            if item.outcome != "overridden" or reason is None or hours <= 0:
                continue
            created += self._suppress(service_id, item.card[:64], reason.code[:100], hours, callers)
        self.purge()
        return created

    def _suppress(
        self, service_id: str, card_uuid: str, reason: str, hours: int, callers: list[str]
    ) -> int:
        now = self.clock()
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    # Write first (see issue()); expired records go on every write.
                    conn.execute(suppressions.delete().where(suppressions.c.expires_at <= now))
                    row = conn.execute(
                        sa.select(card_subjects).where(
                            card_subjects.c.card_uuid == card_uuid,
                            card_subjects.c.service_id == service_id,
                            card_subjects.c.caller_hash.in_(callers),
                        )
                    ).first()
                    if row is None or reason not in (row.reasons or "").split(","):
                        return 0
                    scope = (
                        row.encounter_hash
                        if self.policy.is_per_encounter(row.finding)
                        else NO_ENCOUNTER
                    )
                    key = (
                        suppressions.c.patient_hash == row.patient_hash,
                        suppressions.c.encounter_hash == scope,
                        suppressions.c.kind == row.kind,
                    )
                    # The latest override decides, also when it shortens an earlier one.
                    conn.execute(suppressions.delete().where(*key))
                    conn.execute(
                        suppressions.insert().values(
                            patient_hash=row.patient_hash,
                            encounter_hash=scope,
                            kind=row.kind,
                            status=row.status,
                            reason=reason,
                            created_at=now,
                            expires_at=now + timedelta(hours=hours),
                        )
                    )
                return 1
            except IntegrityError:
                # Another instance wrote the same record at the same moment: try again.
                if attempt == 2:
                    raise StorageError() from None
            except SQLAlchemyError as exc:
                raise StorageError() from exc
        return 0

    def purge(self) -> int:
        """Delete expired suppressions and card subjects past retention; return rows deleted."""
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                gone = conn.execute(suppressions.delete().where(suppressions.c.expires_at <= now))
                old = conn.execute(_OLD_SUBJECTS, {"cutoff": now - SUBJECT_RETENTION})
        except SQLAlchemyError as exc:
            raise StorageError() from exc
        return int(gone.rowcount or 0) + int(old.rowcount or 0)

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


def init_app(app: Flask, policy: Policy) -> None:
    """Attach the suppression state, under the policy read from the app's one content."""
    store: Store = app.extensions["cds_store"]
    app.extensions["cds_suppression"] = Suppressions(
        store.engine, hasher_from_settings(app.config), policy, clock=store.clock
    )
