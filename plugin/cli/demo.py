"""`mkopper-cds demo`: one card from a running service, with nothing else set up.

It posts the patient-view request of a synthetic patient with suspected mpox
(docs/examples/patient-view.request.json, all data inline as prefetch, no FHIR
server) and prints the cards as `call` does. Unsigned, so it needs a service that
accepts unsigned loopback calls: `make run` (CDS_ALLOW_UNSIGNED=1).
Exit codes as `call`.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from importlib import resources
from typing import Any

from rich.console import Console
from rich.markup import escape

from plugin.cli.call import SERVICE_TIMEOUT, report
from plugin.cli.http import EXIT_UNAUTHORIZED, CommandError, base_url, new_session, send

DEFAULT_SERVICE = "http://127.0.0.1:8080"
SERVICE_ID = "mkopper-patient-view"
UNSIGNED_HINT = (
    "the demo sends no JWT: start the service with `make run` (CDS_ALLOW_UNSIGNED=1, "
    "loopback only), or use `mkopper-cds call` with a trusted key"
)


def demo_request() -> dict[str, Any]:
    """The packaged request (generated with docs/examples by `make examples`)."""
    text = resources.files("plugin.cli").joinpath("demo_request.json").read_text("utf-8")
    body: dict[str, Any] = json.loads(text)
    return body


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="show a card: a synthetic suspected-mpox patient, data inline, no FHIR server",
    )
    parser.add_argument(
        "--service", default=DEFAULT_SERVICE, help=f"CDS service base URL ({DEFAULT_SERVICE})"
    )
    parser.add_argument("--json", action="store_true", help="print the raw response JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    try:
        service = base_url(args.service, "--service")
        body = demo_request() | {"hookInstance": str(uuid.uuid4())}
        with new_session("mkopper-cds-demo") as session:
            started = time.perf_counter()
            response = send(
                session,
                "POST",
                f"{service}/cds-services/{SERVICE_ID}",
                what=f"CDS service {service}",
                json_body=body,
                headers={"Accept": "application/json"},
                timeout=SERVICE_TIMEOUT,
            )
            elapsed_ms = (time.perf_counter() - started) * 1000
        if response.status_code == 401:
            message = f"CDS service {service}: HTTP 401; {UNSIGNED_HINT}"
            raise CommandError(message, EXIT_UNAUTHORIZED)
        return report(response, SERVICE_ID, body["hook"], elapsed_ms, args.json, out, err)
    except CommandError as exc:
        err.print(f"[red]demo failed:[/red] {escape(exc.message)}")
        return exc.exit_code
