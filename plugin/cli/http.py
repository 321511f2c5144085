"""HTTP for the command-line clients (`seed`, `call`): timeouts, and failures as exit codes.

Both commands talk to servers the tester names (a FHIR server, a CDS service),
so every failure becomes a :class:`CommandError` with a message a tester can act
on and an exit code a script can test. Messages name the server's base URL and
what was asked for, never a token, a patient id or resource content.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests

from cds_hooks.fhir import normalise_base

EXIT_OK = 0
EXIT_REFUSED = 1  # the server answered, with an error or with something unusable
EXIT_USAGE = 2  # as argparse: the command line does not make sense
EXIT_UNREACHABLE = 3  # no answer: refused connection, unknown host, timeout, TLS failure
EXIT_UNAUTHORIZED = 4  # 401/403: the token or the JWT was not accepted
EXIT_NOT_FOUND = 5  # the FHIR server has no such patient (404/410): a wrong id, not "no cards"

# (connect, read) in seconds. Loading the large synthetic record takes a FHIR
# server a while; a CDS call should answer in well under a second, but a cold
# service may first fetch from its FHIR server.
TIMEOUT = (5.0, 120.0)
MAX_DETAIL_CHARS = 200


class CommandError(Exception):
    """A failure the command reports in one line and turns into its exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def base_url(value: str, option: str) -> str:
    """A server base URL from the command line, without its trailing slash; else a usage error."""
    try:
        normalise_base(value)
    except ValueError as exc:
        raise CommandError(f"{option}: {exc}", EXIT_USAGE) from None
    return value.strip().rstrip("/")


def new_session(user_agent: str) -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = user_agent
    # Proxies from the environment would see bearer tokens; the tester names the servers.
    session.trust_env = False
    return session


def send(
    session: requests.Session,
    method: str,
    url: str,
    *,
    what: str,
    json_body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: tuple[float, float] = TIMEOUT,
) -> requests.Response:
    """One request; a transport failure becomes a :class:`CommandError` naming ``what``."""
    try:
        return session.request(
            method,
            url,
            json=json_body,
            headers=dict(headers or {}),
            timeout=timeout,
            allow_redirects=False,
        )
    except requests.exceptions.SSLError:
        raise CommandError(f"{what}: the TLS handshake failed", EXIT_UNREACHABLE) from None
    except requests.exceptions.ConnectTimeout:
        raise CommandError(
            f"{what}: no connection within {timeout[0]:g} s", EXIT_UNREACHABLE
        ) from None
    except requests.exceptions.ReadTimeout:
        raise CommandError(f"{what}: no answer within {timeout[1]:g} s", EXIT_UNREACHABLE) from None
    except requests.exceptions.ConnectionError:
        raise CommandError(
            f"{what}: cannot connect (is the server running, and is the URL right?)",
            EXIT_UNREACHABLE,
        ) from None
    except requests.exceptions.RequestException as exc:
        raise CommandError(
            f"{what}: request failed ({type(exc).__name__})", EXIT_UNREACHABLE
        ) from None


def json_of(response: requests.Response, what: str) -> Any:
    """The JSON body, or a :class:`CommandError` when there is none."""
    try:
        return response.json()
    except ValueError:
        raise CommandError(
            f"{what}: the answer is not JSON (HTTP {response.status_code})"
        ) from None


def auth_error(response: requests.Response, what: str, hint: str) -> CommandError | None:
    """A :class:`CommandError` for 401/403, else ``None``."""
    if response.status_code == 401:
        return CommandError(f"{what}: not authorised (HTTP 401). {hint}", EXIT_UNAUTHORIZED)
    if response.status_code == 403:
        return CommandError(f"{what}: forbidden (HTTP 403). {hint}", EXIT_UNAUTHORIZED)
    return None


def outcome_summary(body: Any) -> str:
    """The issues of an OperationOutcome in one line: code, path and the server's text."""
    if not isinstance(body, Mapping) or body.get("resourceType") != "OperationOutcome":
        return ""
    parts = []
    for issue in body.get("issue") or []:
        if not isinstance(issue, Mapping):
            continue
        part = str(issue.get("code") or "error")
        paths = issue.get("expression") or issue.get("location") or []
        if isinstance(paths, list) and paths:
            part += " at " + ", ".join(str(p) for p in paths[:3])
        details = issue.get("details")
        text = details.get("text") if isinstance(details, Mapping) else None
        if isinstance(text, str) and text:
            part += f": {text[:MAX_DETAIL_CHARS]}"
        parts.append(part)
    return "; ".join(parts[:5])
