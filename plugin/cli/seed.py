"""`mkopper-cds seed --fhir-server URL [--token TOKEN]`: load the synthetic patients.

Each patient in ``fhir_profiles/patients/`` is a transaction Bundle of PUTs to
fixed ids, so seeding twice changes nothing. Before each transaction the
command reads the same ids in one batch, so the summary can say per patient
what was created, what was updated and what was already there (FHIR servers
answer a PUT with 200 or 201 inconsistently; the batch read does not depend on
that). When a server refuses a transaction, the command names the resources it
refused (type/id) and the server's reason, never the resources' content.

The samples' clinical dates are relative to the day they are loaded (:func:`as_of`):
each patient's dates move by one whole number of days, so that its newest clinical
date falls ``DAYS_BEFORE_LOADING`` days before that day and a laboratory result stays
inside the service's lookback window. Birth dates do not move. Loading twice on one
day changes nothing; loading on a later day updates the moved dates.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import requests
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from plugin.cli.http import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    CommandError,
    auth_error,
    base_url,
    json_of,
    new_session,
    outcome_summary,
    send,
)
from plugin.storage.store import utcnow

FHIR_JSON = "application/fhir+json"
ACCESS_HINT = "Give the FHIR server's access token with --token or CDS_FHIR_TOKEN."
# Server-kept metadata that differs between two identical stores of one resource.
SERVER_META = frozenset({"versionId", "lastUpdated", "source", "author", "project", "compartment"})
# When a server refuses a transaction without saying which entry, each resource is
# checked on its own with $validate; this many at most, and stop after a few culprits.
MAX_VALIDATE_CALLS = 300
MAX_CULPRITS = 3
ENTRY_INDEX = re.compile(r"entry\[(\d+)\]")
# The newest clinical date of each sample falls this many days before the day of loading.
DAYS_BEFORE_LOADING = 1
# The elements that hold a clinical date or time in the samples (Encounter.period has start and
# end), and in the resources they may grow (Procedure, Communication). Patient.birthDate is not
# one: the synthetic fødselsnummer carries the birth date.
CLINICAL_DATES = frozenset(
    {
        "abatementDateTime",
        "assertedDate",
        "authoredOn",
        "effectiveDateTime",
        "effectiveInstant",
        "end",
        "issued",
        "occurrenceDateTime",
        "onsetDateTime",
        "performedDateTime",
        "recordedDate",
        "sent",
        "start",
    }
)
# A full FHIR date, or a dateTime/instant: the first ten characters are the written day.
FULL_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(T[0-9:.]+(Z|[+-]\d{2}:\d{2}))?")


@dataclass(frozen=True, slots=True)
class SyntheticPatient:
    id: str
    description: str
    bundle: Mapping[str, Any]

    @property
    def entries(self) -> list[Mapping[str, Any]]:
        return list(self.bundle.get("entry") or [])


@dataclass(slots=True)
class Outcome:
    """What one patient's transaction did, per resource."""

    patient: str
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)  # stored, but no telling how
    error: str | None = None


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "seed",
        help="load the synthetic patients into a FHIR server",
        description="Load every synthetic patient (FHIR R4 transaction Bundles with fixed ids) "
        "into a FHIR server, its clinical dates moved so that the newest falls "
        f"{DAYS_BEFORE_LOADING} day before the day of loading. Loading twice on one day "
        "changes nothing.",
    )
    parser.add_argument("--fhir-server", required=True, metavar="URL", help="FHIR R4 base URL")
    parser.add_argument(
        "--token",
        default=None,
        help="bearer token for the FHIR server (default: CDS_FHIR_TOKEN; prefer the "
        "environment, a command line is visible to other users)",
    )
    parser.add_argument(
        "--patient",
        action="append",
        default=None,
        metavar="ID",
        help="load only this patient (repeatable; default: all)",
    )
    parser.add_argument(
        "--as-of",
        type=_day,
        default=None,
        metavar="YYYY-MM-DD",
        help=f"date the samples relative to this day: each patient's newest clinical date "
        f"falls {DAYS_BEFORE_LOADING} day before it (default: today, UTC)",
    )
    parser.set_defaults(func=run)


def _day(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None


def load_patients(only: Sequence[str] | None = None) -> list[SyntheticPatient]:
    """The synthetic patients shipped in the package, in the order of ``index.json``."""
    folder = resources.files("fhir_profiles").joinpath("patients")
    index = json.loads(folder.joinpath("index.json").read_text(encoding="utf-8"))
    listed = index["patients"]
    known = [str(item["id"]) for item in listed]
    unknown = [pid for pid in only or [] if pid not in known]
    if unknown:
        raise CommandError(
            f"no synthetic patient {', '.join(unknown)}; there are: {', '.join(known)}",
            EXIT_USAGE,
        )
    patients = []
    for item in listed:
        if only and item["id"] not in only:
            continue
        bundle = json.loads(folder.joinpath(item["file"]).read_text(encoding="utf-8"))
        patients.append(SyntheticPatient(str(item["id"]), str(item["description"]), bundle))
    return patients


def clinical_dates(bundle: Mapping[str, Any]) -> list[str]:
    """Every clinical date or time written in a sample's resources (not the Patient's)."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                if key in CLINICAL_DATES and isinstance(item, str):
                    found.append(item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") != "Patient":
            walk(resource)
    return found


def _written_day(value: str) -> dt.date | None:
    return dt.date.fromisoformat(value[:10]) if FULL_DATE.fullmatch(value) else None


def as_of(
    patient: SyntheticPatient, day: dt.date, days_before: int = DAYS_BEFORE_LOADING
) -> SyntheticPatient:
    """The sample dated relative to ``day``: every clinical date moves by the same whole number
    of days, so that the newest falls ``days_before`` days before ``day``. Times of day and UTC
    offsets stay as written; so does the order of events."""
    days = [d for d in map(_written_day, clinical_dates(patient.bundle)) if d is not None]
    if not days:
        return patient
    shift = (day - dt.timedelta(days=days_before)) - max(days)

    def move(value: Any, key: str | None = None) -> Any:
        if isinstance(value, Mapping):
            return {k: move(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [move(item, key) for item in value]
        if key in CLINICAL_DATES and isinstance(value, str):
            written = _written_day(value)
            if written is not None:
                return (written + shift).isoformat() + value[10:]
        return value

    entries = []
    for entry in patient.entries:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "Patient":
            entries.append(entry)
        else:
            entries.append({**entry, "resource": move(resource)})
    return SyntheticPatient(patient.id, patient.description, {**patient.bundle, "entry": entries})


def entry_label(entry: Mapping[str, Any]) -> str:
    """``Type/id`` of an entry, from its request URL or its resource."""
    request = entry.get("request") or {}
    url = request.get("url") if isinstance(request, Mapping) else None
    if isinstance(url, str) and url:
        return url.split("?")[0]
    resource = entry.get("resource") or {}
    return f"{resource.get('resourceType', '?')}/{resource.get('id', '?')}"


def comparable(resource: Any) -> Any:
    """A resource without the metadata a server adds on every write."""
    if not isinstance(resource, Mapping):
        return resource
    copy = dict(resource)
    meta = {k: v for k, v in (copy.pop("meta", None) or {}).items() if k not in SERVER_META}
    if meta:
        copy["meta"] = meta
    return copy


class Seeder:
    """Loads synthetic patients into one FHIR server."""

    def __init__(self, base_url: str, token: str | None, session: requests.Session):
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.headers = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def _post(self, path: str, body: Any, what: str) -> requests.Response:
        response = send(
            self.session,
            "POST",
            self.base_url + path,
            what=what,
            json_body=body,
            headers=self.headers,
        )
        failure = auth_error(response, what, ACCESS_HINT)
        if failure is not None:
            raise failure
        return response

    def check_reachable(self) -> None:
        """Fail early, before any write, when the server is not there or refuses us."""
        what = f"FHIR server {self.base_url}"
        response = send(
            self.session, "GET", self.base_url + "/metadata", what=what, headers=self.headers
        )
        failure = auth_error(response, what, ACCESS_HINT)
        if failure is not None:
            raise failure

    def stored_before(self, patient: SyntheticPatient) -> list[Any] | None:
        """What the server holds now under each entry's id (``None`` per absent one).

        ``None`` for the whole list when the server cannot answer a batch read.
        """
        batch = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {"request": {"method": "GET", "url": entry_label(entry)}}
                for entry in patient.entries
            ],
        }
        response = self._post("/", batch, f"FHIR server {self.base_url} (reading {patient.id})")
        if response.status_code != 200:
            return None
        body = json_of(response, f"FHIR server {self.base_url}")
        answers = body.get("entry") if isinstance(body, Mapping) else None
        if not isinstance(answers, list) or len(answers) != len(patient.entries):
            return None
        stored: list[Any] = []
        for answer in answers:
            status = str((answer.get("response") or {}).get("status", ""))
            stored.append(answer.get("resource") if status.startswith("200") else None)
        return stored

    def seed(self, patient: SyntheticPatient) -> Outcome:
        outcome = Outcome(patient.id)
        before = self.stored_before(patient)
        what = f"FHIR server {self.base_url} (loading {patient.id})"
        response = self._post("/", dict(patient.bundle), what)
        if response.status_code != 200:
            outcome.error = self.explain_refusal(patient, response)
            return outcome
        body = json_of(response, what)
        answers = body.get("entry") if isinstance(body, Mapping) else None
        for index, entry in enumerate(patient.entries):
            label = entry_label(entry)
            if before is not None:
                old = before[index]
                if old is None:
                    outcome.created.append(label)
                elif comparable(old) == comparable(entry.get("resource")):
                    outcome.unchanged.append(label)
                else:
                    outcome.updated.append(label)
                continue
            status = ""
            if isinstance(answers, list) and index < len(answers):
                status = str((answers[index].get("response") or {}).get("status", ""))
            (outcome.created if status.startswith("201") else outcome.written).append(label)
        return outcome

    def explain_refusal(self, patient: SyntheticPatient, response: requests.Response) -> str:
        """Which resources the server refused and why: type/id and reason, no content."""
        try:
            body = response.json()
        except ValueError:
            body = None
        reason = outcome_summary(body)
        culprits = self._entries_named_in(body, patient)
        if not culprits:
            culprits = self._validate_each(patient)
        head = f"the server refused the transaction (HTTP {response.status_code})"
        if culprits:
            return f"{head}; refused: " + "; ".join(culprits)
        return f"{head}: {reason or 'no reason given'}"

    @staticmethod
    def _entries_named_in(body: Any, patient: SyntheticPatient) -> list[str]:
        if not isinstance(body, Mapping):
            return []
        found: dict[int, str] = {}
        for issue in body.get("issue") or []:
            paths = [*(issue.get("expression") or []), *(issue.get("location") or [])]
            for path in paths:
                match = ENTRY_INDEX.search(str(path))
                if match and int(match.group(1)) < len(patient.entries):
                    index = int(match.group(1))
                    text = outcome_summary({"resourceType": "OperationOutcome", "issue": [issue]})
                    found.setdefault(index, f"{entry_label(patient.entries[index])} ({text})")
        return list(found.values())[:MAX_CULPRITS]

    def _validate_each(self, patient: SyntheticPatient) -> list[str]:
        culprits: list[str] = []
        for entry in patient.entries[:MAX_VALIDATE_CALLS]:
            resource = entry.get("resource")
            if not isinstance(resource, Mapping):
                continue
            label = entry_label(entry)
            response = self._post(
                f"/{resource.get('resourceType')}/$validate",
                dict(resource),
                f"FHIR server {self.base_url} (validating {label})",
            )
            try:
                body = response.json()
            except ValueError:
                body = None
            issues = body.get("issue") if isinstance(body, Mapping) else None
            errors = [
                issue
                for issue in issues or []
                if isinstance(issue, Mapping) and issue.get("severity") in ("error", "fatal")
            ]
            if response.status_code >= 400 or errors:
                summary = outcome_summary({"resourceType": "OperationOutcome", "issue": errors})
                culprits.append(f"{label} ({summary or f'HTTP {response.status_code}'})")
                if len(culprits) >= MAX_CULPRITS:
                    break
        return culprits


def summary_table(outcomes: Sequence[Outcome]) -> Table:
    table = Table(title="Synthetic patients", title_justify="left")
    table.add_column("patient", no_wrap=True)
    table.add_column("created", justify="right")
    table.add_column("updated", justify="right")
    table.add_column("unchanged", justify="right")
    written = any(o.written for o in outcomes)
    if written:
        table.add_column("stored", justify="right")
    table.add_column("result")
    for o in outcomes:
        row = [o.patient, str(len(o.created)), str(len(o.updated)), str(len(o.unchanged))]
        if written:
            row.append(str(len(o.written)))
        row.append("[red]refused[/red]" if o.error else "[green]ok[/green]")
        table.add_row(*row)
    return table


def seed_all(
    seeder: Seeder, patients: Sequence[SyntheticPatient], console: Console
) -> Iterator[Outcome]:
    total = sum(len(p.entries) for p in patients)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("resources"),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("seeding", total=total)
        for patient in patients:
            progress.update(task, description=f"{patient.id:<36}")
            yield seeder.seed(patient)
            progress.advance(task, len(patient.entries))


def run(args: argparse.Namespace, clock: Callable[[], dt.datetime] = utcnow) -> int:
    """The command; ``clock`` gives today (UTC) when ``--as-of`` does not."""
    out = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    token = args.token or os.environ.get("CDS_FHIR_TOKEN") or None
    day: dt.date = args.as_of or clock().astimezone(dt.UTC).date()
    try:
        fhir_server = base_url(args.fhir_server, "--fhir-server")
        patients = [as_of(patient, day) for patient in load_patients(args.patient)]
        with new_session("mkopper-cds-seed") as session:
            seeder = Seeder(fhir_server, token, session)
            seeder.check_reachable()
            outcomes = list(seed_all(seeder, patients, err))
    except CommandError as exc:
        err.print(f"[red]seed failed:[/red] {escape(exc.message)}")
        return exc.exit_code
    out.print(summary_table(outcomes))
    created = sum(len(o.created) for o in outcomes)
    updated = sum(len(o.updated) for o in outcomes)
    unchanged = sum(len(o.unchanged) for o in outcomes)
    written = sum(len(o.written) for o in outcomes)
    line = f"{created} created, {updated} updated, {unchanged} already there"
    if written:
        line += f", {written} stored (the server did not say whether new)"
    out.print(escape(line + f" on {seeder.base_url}, dated as of {day.isoformat()}"))
    failed = [o for o in outcomes if o.error]
    for o in failed:
        print(f"{o.patient}: {o.error}", file=sys.stderr)
    return EXIT_REFUSED if failed else EXIT_OK
