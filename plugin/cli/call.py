"""`mkopper-cds call HOOK --patient ID ...`: a CDS client in the terminal.

It does what an EHR does: reads the service's discovery, picks the service for
the hook, builds the context, fills the service's prefetch templates from the
FHIR server (unless ``--no-prefetch``), signs the call with an ES384 JWT from
its own key pair (see :mod:`plugin.cli.client_key`), posts it and prints the cards.
``--print-trust`` prints the entry a service needs to trust this client.

Exit codes: 0 the service answered (with cards or without), 1 the service
answered with an error or with something that is not a CDS Hooks response,
2 usage, 3 a server could not be reached, 4 a server refused the JWT or token,
5 the FHIR server has no patient with that id (a wrong id is not "no cards").
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

import requests
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from cds_hooks.models import CdsResponse
from plugin.cli.call_request import (
    HOOKS,
    VERIFICATION,
    CallInput,
    PrefetchReader,
    build_context,
    build_request,
    fhir_authorization,
    parse_code,
)
from plugin.cli.call_view import print_cards
from plugin.cli.client_key import ClientKey, load_or_create
from plugin.cli.http import (
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    auth_error,
    base_url,
    json_of,
    new_session,
    send,
)
from plugin.config import data_dir, load_settings

DEFAULT_USER = "Practitioner/mkopper-cds-tester"
TRUST_HINT = (
    "Add the output of `mkopper-cds call --print-trust` to the service's "
    "CDS_TRUSTED_CLIENTS file and restart it."
)
# A CDS service answers within a second or two; a cold one may first fetch from FHIR.
SERVICE_TIMEOUT = (5.0, 30.0)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "call",
        help="call a CDS service as an EHR would and print its cards",
        description="Call a CDS service as an EHR would: discovery, context, prefetch from "
        "the FHIR server, a signed JWT, and the cards printed readably.",
    )
    parser.add_argument("hook", nargs="?", choices=HOOKS, help="the hook to fire")
    parser.add_argument("--patient", metavar="ID", help="Patient id on the FHIR server")
    parser.add_argument("--encounter", metavar="ID", help="Encounter id (encounter-* hooks)")
    parser.add_argument(
        "--order",
        action="append",
        default=[],
        metavar="CODE",
        help="code of a draft ServiceRequest (order-select, order-sign; repeatable): "
        "SYSTEM|CODE, sct:CODE, loinc:CODE, or a bare SNOMED CT or LOINC code",
    )
    parser.add_argument(
        "--condition",
        action="append",
        default=[],
        metavar="CODE",
        help="code of a new problem-list Condition (problem-list-item-create; repeatable)",
    )
    parser.add_argument(
        "--verification",
        choices=VERIFICATION,
        default="confirmed",
        help="verificationStatus of the new Condition (default: confirmed)",
    )
    parser.add_argument(
        "--user",
        default=DEFAULT_USER,
        metavar="REF",
        help=f"context.userId (default: {DEFAULT_USER})",
    )
    parser.add_argument("--fhir-server", metavar="URL", help="FHIR R4 base URL")
    parser.add_argument(
        "--fhir-token",
        default=None,
        metavar="TOKEN",
        help="access token for the FHIR server, sent to the service as fhirAuthorization "
        "(default: CDS_FHIR_TOKEN; prefer the environment, a command line is visible to others)",
    )
    parser.add_argument(
        "--service",
        metavar="BASE_URL",
        default=None,
        help="CDS service base URL (default: CDS_SERVICE_URL)",
    )
    parser.add_argument(
        "--service-id",
        metavar="ID",
        default=None,
        help="which service, when several answer the hook",
    )
    parser.add_argument(
        "--no-prefetch",
        action="store_true",
        help="send no prefetch: the service fetches from the FHIR server itself",
    )
    parser.add_argument("--json", action="store_true", help="print the raw response JSON")
    parser.add_argument(
        "--print-trust",
        action="store_true",
        help="print this client's CDS_TRUSTED_CLIENTS entry and exit",
    )
    parser.set_defaults(func=run)


class CdsCaller:
    """Discovery and service calls against one CDS service, each with a fresh JWT."""

    def __init__(self, base_url: str, key: ClientKey, session: requests.Session):
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.session = session

    def _headers(self, url: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.key.token(url)}",
            "Accept": "application/json",
        }

    def discover(self) -> list[dict[str, Any]]:
        url = f"{self.base_url}/cds-services"
        what = f"CDS service {self.base_url} (discovery)"
        response = send(
            self.session, "GET", url, what=what, headers=self._headers(url), timeout=SERVICE_TIMEOUT
        )
        failure = auth_error(response, what, TRUST_HINT)
        if failure is not None:
            raise failure
        if response.status_code != 200:
            raise CommandError(f"{what}: HTTP {response.status_code}{_error_text(response)}")
        body = json_of(response, what)
        services = body.get("services") if isinstance(body, dict) else None
        if not isinstance(services, list):
            raise CommandError(f"{what}: the answer has no 'services' list")
        return [s for s in services if isinstance(s, dict)]

    def post(self, service_id: str, body: dict[str, Any]) -> requests.Response:
        url = f"{self.base_url}/cds-services/{service_id}"
        headers = self._headers(url) | {"Content-Type": "application/json"}
        return send(
            self.session,
            "POST",
            url,
            what=f"CDS service {self.base_url}",
            json_body=body,
            headers=headers,
            timeout=SERVICE_TIMEOUT,
        )


def _error_text(response: requests.Response) -> str:
    """The service's own error message (its one error shape), if it sent one."""
    try:
        body = response.json()
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return ""
    text = f": {error.get('message', '')}"
    details = error.get("details")
    if isinstance(details, list) and details:
        named = [
            ", ".join(f"{k}={v}" for k, v in item.items())
            for item in details[:5]
            if isinstance(item, dict)
        ]
        text += " (" + "; ".join(named) + ")"
    return text


def choose_service(
    services: list[dict[str, Any]], hook: str, service_id: str | None
) -> dict[str, Any]:
    if service_id is not None:
        for service in services:
            if service.get("id") == service_id:
                if service.get("hook") != hook:
                    raise CommandError(
                        f"service {service_id} answers {service.get('hook')}, not {hook}",
                        EXIT_USAGE,
                    )
                return service
        raise CommandError(f"the service offers no service with id {service_id}", EXIT_USAGE)
    matching = [s for s in services if s.get("hook") == hook]
    if not matching:
        hooks = sorted({str(s.get("hook")) for s in services})
        raise CommandError(
            f"no service for {hook}; the service answers: {', '.join(hooks) or 'nothing'}",
            EXIT_USAGE,
        )
    if len(matching) > 1:
        ids = ", ".join(str(s.get("id")) for s in matching)
        raise CommandError(
            f"several services answer {hook} ({ids}); pick one with --service-id", EXIT_USAGE
        )
    return matching[0]


def _call_input(args: argparse.Namespace) -> CallInput:
    if not args.hook:
        raise CommandError("give the hook to fire (or --print-trust)", EXIT_USAGE)
    if not args.patient:
        raise CommandError("give --patient ID", EXIT_USAGE)
    if not args.fhir_server:
        raise CommandError("give --fhir-server URL", EXIT_USAGE)
    return CallInput(
        hook=args.hook,
        patient=args.patient,
        user=args.user,
        encounter=args.encounter,
        orders=tuple(parse_code(code) for code in args.order),
        conditions=tuple(parse_code(code) for code in args.condition),
        verification=args.verification,
    )


def call(args: argparse.Namespace, settings: dict[str, Any], out: Console, err: Console) -> int:
    call_input = _call_input(args)
    context = build_context(call_input)
    token = args.fhir_token or str(settings.get("CDS_FHIR_TOKEN") or "") or None
    service_url = args.service or str(settings.get("CDS_SERVICE_URL") or "")
    if not service_url:
        raise CommandError("give --service BASE_URL or set CDS_SERVICE_URL", EXIT_USAGE)
    service_url = base_url(service_url, "--service")
    fhir_server = base_url(args.fhir_server, "--fhir-server")
    key = load_or_create(data_dir(settings))
    with new_session("mkopper-cds-call") as session:
        caller = CdsCaller(service_url, key, session)
        service = choose_service(caller.discover(), call_input.hook, args.service_id)
        service_id = str(service.get("id"))
        templates = service.get("prefetch") or {}
        prefetch: dict[str, Any] | None = None
        reader = PrefetchReader(session, fhir_server, token)
        reader.require_patient(call_input.patient)
        if not args.no_prefetch and templates:
            fetched = reader.read_all(templates, context)
            for note in fetched.notes:
                err.print(escape(note), style="yellow")
            prefetch = fetched.values
        authorization = fhir_authorization(token, call_input.patient, templates) if token else None
        body = build_request(
            call_input,
            hook_instance=str(uuid.uuid4()),
            fhir_server=fhir_server,
            context=context,
            prefetch=prefetch,
            authorization=authorization,
        )
        started = time.perf_counter()
        response = caller.post(service_id, body)
        elapsed_ms = (time.perf_counter() - started) * 1000
    return report(response, service_id, call_input.hook, elapsed_ms, args.json, out, err)


def report(
    response: requests.Response,
    service_id: str,
    hook: str,
    elapsed_ms: float,
    raw: bool,
    out: Console,
    err: Console,
) -> int:
    what = f"CDS service {service_id}"
    if raw:
        try:
            print(json.dumps(response.json(), indent=2, ensure_ascii=False))
        except ValueError:
            pass
    failure = auth_error(response, what, TRUST_HINT)
    if failure is not None:
        raise CommandError(failure.message + _error_text(response), failure.exit_code)
    if response.status_code == 412:
        raise CommandError(
            f"{what}: the FHIR data it needs is not available (HTTP 412){_error_text(response)}"
        )
    if response.status_code != 200:
        raise CommandError(f"{what}: HTTP {response.status_code}{_error_text(response)}")
    body = json_of(response, what)
    try:
        parsed = CdsResponse.model_validate(body)
    except ValidationError as exc:
        paths = sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors()})
        raise CommandError(
            f"{what}: not a CDS Hooks response (at {', '.join(paths[:5])})"
        ) from None
    if not raw:
        print_cards(out, service_id, hook, parsed.cards, elapsed_ms)
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    out = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    settings = load_settings()
    try:
        if args.print_trust:
            key = load_or_create(data_dir(settings))
            print(json.dumps(key.trust_entry(), indent=2))
            return EXIT_OK
        return call(args, settings, out, err)
    except CommandError as exc:
        err.print(f"[red]call failed:[/red] {escape(exc.message)}")
        return exc.exit_code
