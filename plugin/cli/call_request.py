"""A CDS Hooks request built the way an EHR builds it, for the `call` command.

The context follows the hook library (patient-view, encounter-start and
-discharge, order-select and -sign, appointment-book, problem-list-item-create);
draft orders, proposed appointments and new problems are made from the codes
given on the command line. Prefetch is what an EHR would send: each of the
service's own templates filled from the context (``cds_hooks.prefetch`` fills
them exactly as the service does) and read from the FHIR server, a search as
its searchset Bundle (pages joined), a read as its resource, and ``null`` when
the resource does not exist. A key that cannot be read is left out, so the
service fetches it itself or answers 412, as the spec has it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urljoin

import requests

from cds_hooks.fhir import bundle_resources, next_link, same_base
from cds_hooks.prefetch import UnfillableTemplate, fill_template
from plugin.cli.http import (
    EXIT_NOT_FOUND,
    EXIT_UNAUTHORIZED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CommandError,
    send,
)

HOOKS = (
    "patient-view",
    "encounter-start",
    "encounter-discharge",
    "order-select",
    "order-sign",
    "appointment-book",
    "problem-list-item-create",
)
NEEDS_ENCOUNTER = frozenset({"encounter-start", "encounter-discharge"})
NEEDS_ORDER = frozenset({"order-select", "order-sign"})

SYSTEMS = {
    "sct": "http://snomed.info/sct",
    "snomed": "http://snomed.info/sct",
    "loinc": "http://loinc.org",
    "icd10": "http://hl7.org/fhir/sid/icd-10",
    "icd10no": "http://hl7.org/fhir/sid/icd-10-no",
}
LOINC_SHAPE = re.compile(r"^\d{1,8}-\d$")
SNOMED_SHAPE = re.compile(r"^\d{6,18}$")
ICD10_SHAPE = re.compile(r"^[A-Z]\d\d(\.\d{1,4})?$")
VERIFICATION = ("unconfirmed", "provisional", "differential", "confirmed", "refuted")

FHIR_JSON = "application/fhir+json"
MAX_PAGES = 100  # a large record has a thousand Conditions; stop well past that
PREFETCH_TIMEOUT = (5.0, 30.0)
TOKEN_LIFETIME_S = 300  # what fhirAuthorization says; the command cannot know the real value


@dataclass(frozen=True, slots=True)
class CallInput:
    """What the command line says about the moment being simulated."""

    hook: str
    patient: str
    user: str
    encounter: str | None = None
    orders: tuple[dict[str, str], ...] = ()
    conditions: tuple[dict[str, str], ...] = ()
    verification: str = "confirmed"
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


def parse_code(text: str) -> dict[str, str]:
    """A Coding from ``system|code``, ``alias:code`` or a bare code of a recognisable shape."""
    value = text.strip()
    if "|" in value:
        system, _, code = value.partition("|")
        if system.strip() and code.strip():
            return {"system": system.strip(), "code": code.strip()}
    elif ":" in value and not value.startswith(("http:", "https:", "urn:")):
        alias, _, code = value.partition(":")
        if alias.lower() in SYSTEMS and code:
            return {"system": SYSTEMS[alias.lower()], "code": code}
    elif LOINC_SHAPE.match(value):
        return {"system": SYSTEMS["loinc"], "code": value}
    elif SNOMED_SHAPE.match(value):
        return {"system": SYSTEMS["sct"], "code": value}
    elif ICD10_SHAPE.match(value):
        return {"system": SYSTEMS["icd10"], "code": value}
    raise CommandError(
        f"cannot tell the code system of {text!r}: write SYSTEM|CODE "
        "(e.g. http://snomed.info/sct|112798008) or sct:, loinc:, icd10:, icd10no: CODE",
        EXIT_USAGE,
    )


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bundle(resources: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": dict(resource)} for resource in resources],
    }


def _draft_orders(call: CallInput) -> list[dict[str, Any]]:
    orders = []
    for number, coding in enumerate(call.orders, start=1):
        order: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "id": f"draft-order-{number}",
            "status": "draft",
            "intent": "order",
            "code": {"coding": [coding]},
            "subject": {"reference": f"Patient/{call.patient}"},
            "authoredOn": _instant(call.now),
        }
        if call.encounter:
            order["encounter"] = {"reference": f"Encounter/{call.encounter}"}
        orders.append(order)
    return orders


def _proposed_appointment(call: CallInput) -> dict[str, Any]:
    start = (call.now + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    return {
        "resourceType": "Appointment",
        "id": "proposed-appointment-1",
        "status": "proposed",
        "start": _instant(start),
        "end": _instant(start + timedelta(minutes=30)),
        "participant": [
            {"actor": {"reference": f"Patient/{call.patient}"}, "status": "needs-action"}
        ],
    }


def _new_problems(call: CallInput) -> list[dict[str, Any]]:
    problems = []
    for number, coding in enumerate(call.conditions, start=1):
        condition: dict[str, Any] = {
            "resourceType": "Condition",
            "id": f"new-problem-{number}",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                            "code": "problem-list-item",
                        }
                    ]
                }
            ],
            "clinicalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": "active",
                    }
                ]
            },
            "verificationStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                        "code": call.verification,
                    }
                ]
            },
            "code": {"coding": [coding]},
            "subject": {"reference": f"Patient/{call.patient}"},
            "recordedDate": _instant(call.now),
        }
        if call.encounter:
            condition["encounter"] = {"reference": f"Encounter/{call.encounter}"}
        problems.append(condition)
    return problems


def build_context(call: CallInput) -> dict[str, Any]:
    """The hook's context; what the hook requires and the command line lacks is a usage error."""
    if call.hook not in HOOKS:
        raise CommandError(f"unknown hook {call.hook!r}; one of: {', '.join(HOOKS)}", EXIT_USAGE)
    if call.hook in NEEDS_ENCOUNTER and not call.encounter:
        raise CommandError(f"{call.hook} needs --encounter ID", EXIT_USAGE)
    if call.hook in NEEDS_ORDER and not call.orders:
        raise CommandError(f"{call.hook} needs at least one --order CODE", EXIT_USAGE)
    if call.hook == "problem-list-item-create" and not call.conditions:
        raise CommandError(
            "problem-list-item-create needs at least one --condition CODE", EXIT_USAGE
        )
    context: dict[str, Any] = {"userId": call.user, "patientId": call.patient}
    if call.encounter:
        context["encounterId"] = call.encounter
    if call.hook in NEEDS_ORDER:
        drafts = _draft_orders(call)
        if call.hook == "order-select":
            context["selections"] = [f"ServiceRequest/{order['id']}" for order in drafts]
        context["draftOrders"] = _bundle(drafts)
    elif call.hook == "appointment-book":
        context["appointments"] = _bundle([_proposed_appointment(call)])
    elif call.hook == "problem-list-item-create":
        context["conditions"] = _bundle(_new_problems(call))
    return context


def fhir_authorization(token: str, patient: str, templates: Mapping[str, str]) -> dict[str, Any]:
    """``fhirAuthorization`` for a token the tester already has.

    The scope names the resource types the service's templates read: what the
    service needs, as an EHR would grant it (the command cannot see the token's own).
    """
    types = sorted({t.split("?")[0].split("/")[0] for t in templates.values()} - {""})
    scope = " ".join(f"patient/{t}.read" for t in types) or "patient/*.read"
    return {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME_S,
        "scope": scope,
        "subject": "mkopper-cds-call",
        "patient": patient,
    }


@dataclass(slots=True)
class Prefetch:
    values: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class PrefetchReader:
    """Reads prefetch templates from one FHIR server, as an EHR fills them."""

    def __init__(self, session: requests.Session, base_url: str, token: str | None):
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.headers = {"Accept": FHIR_JSON}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def require_patient(self, patient_id: str) -> None:
        """Stop with a clear error when the FHIR server has no such Patient.

        A mistyped id would otherwise give an empty prefetch and "no cards", exactly what
        a healthy patient gives. The message names the server, never the id.
        """
        what = f"FHIR server {self.base_url}"
        url = f"{self.base_url}/Patient/{quote(patient_id, safe='')}"
        response = send(
            self.session, "GET", url, what=what, headers=self.headers, timeout=PREFETCH_TIMEOUT
        )
        status = response.status_code
        if status in (401, 403):
            raise CommandError(
                f"{what}: the FHIR server refused the token (HTTP {status}); "
                "give it with --fhir-token or CDS_FHIR_TOKEN",
                EXIT_UNAUTHORIZED,
            )
        if status in (404, 410):
            raise CommandError(
                f"{what}: patient not found (HTTP {status}); check --patient "
                "(`mkopper-cds seed` prints the synthetic patients' ids)",
                EXIT_NOT_FOUND,
            )

    def read_all(self, templates: Mapping[str, str], context: Mapping[str, Any]) -> Prefetch:
        result = Prefetch()
        for key, template in templates.items():
            try:
                relative = fill_template(template, context)
            except UnfillableTemplate as exc:
                result.notes.append(f"prefetch {key}: not sent ({exc} has no value)")
                continue
            value, note = self.read(key, relative)
            if note:
                result.notes.append(note)
                continue
            result.values[key] = value
        return result

    def read(self, key: str, relative: str) -> tuple[Any, str | None]:
        """The prefetch value for one key, or a note saying why it is left out."""
        url = f"{self.base_url}/{relative.lstrip('/')}"
        what = f"FHIR server {self.base_url} (prefetch {key})"
        is_read = "?" not in relative
        found: list[dict[str, Any]] = []
        for _ in range(MAX_PAGES):
            response = send(
                self.session, "GET", url, what=what, headers=self.headers, timeout=PREFETCH_TIMEOUT
            )
            status = response.status_code
            if status in (401, 403):
                raise CommandError(
                    f"{what}: the FHIR server refused the token (HTTP {status}); "
                    "give it with --fhir-token or CDS_FHIR_TOKEN",
                    EXIT_UNAUTHORIZED,
                )
            if is_read and status in (404, 410):
                return None, None  # the spec's null: known to be absent
            if status >= 500 or status == 429:
                raise CommandError(
                    f"{what}: the FHIR server failed (HTTP {status})", EXIT_UNREACHABLE
                )
            if status != 200:
                return None, f"prefetch {key}: not sent (FHIR server answered HTTP {status})"
            try:
                body = response.json()
            except ValueError:
                return None, f"prefetch {key}: not sent (the FHIR server's answer is not JSON)"
            if not isinstance(body, dict) or body.get("resourceType") == "OperationOutcome":
                return None, f"prefetch {key}: not sent (the FHIR server answered with an error)"
            if body.get("resourceType") != "Bundle" or is_read:
                return body, None
            found.extend(bundle_resources(body))
            following = next_link(body)
            if following is None:
                joined = {
                    "resourceType": "Bundle",
                    "type": "searchset",
                    "total": len(found),
                    "entry": [{"resource": resource} for resource in found],
                }
                return joined, None
            url = urljoin(url, following)
            if not same_base(url, self.base_url):
                # The token must not go to another server; an incomplete answer is no answer.
                return None, f"prefetch {key}: not sent (next page is on another server)"
        return None, f"prefetch {key}: not sent (more than {MAX_PAGES} pages)"


def build_request(
    call: CallInput,
    *,
    hook_instance: str,
    fhir_server: str,
    context: Mapping[str, Any],
    prefetch: Mapping[str, Any] | None,
    authorization: Mapping[str, Any] | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": call.hook,
        "hookInstance": hook_instance,
        "fhirServer": fhir_server.rstrip("/"),
        "context": dict(context),
    }
    if authorization is not None:
        body["fhirAuthorization"] = dict(authorization)
    if prefetch is not None:
        body["prefetch"] = dict(prefetch)
    return body
