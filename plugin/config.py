"""Settings: one table of (name, default, help, parser), read from ``CDS_*`` environment variables.

Every setting is documented in the README's settings table; a test fails when
one is missing there. Values are strings in the environment; each row's parser types
its value once, at start, so a bad value stops the service before the first call and no
call site parses a setting again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cds_hooks.fhir import Allowlist

Parser = Callable[[str, Any], Any]


def text(_name: str, value: Any) -> str:
    return str(value if value is not None else "")


def boolean(_name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def comma_list(_name: str, value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    return [part.strip() for part in str(value or "").split(",") if part.strip()]


def integer(minimum: int | None = None) -> Parser:
    def parse(name: str, value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"setting {name} must be an integer")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"setting {name} must be an integer") from None
        if minimum is not None and number < minimum:
            raise ValueError(f"setting {name} must be at least {minimum}")
        return number

    return parse


def one_of(*choices: str) -> Parser:
    def parse(name: str, value: Any) -> str:
        choice = str(value).strip()
        if choice not in choices:
            raise ValueError(f"setting {name} must be one of {', '.join(choices)}")
        return choice

    return parse


def allowlist(_name: str, value: Any) -> Allowlist:
    """The FHIR server allowlist; a bad entry stops the service at start, naming its position."""
    if isinstance(value, Allowlist):
        return value
    return Allowlist.from_setting(str(value or ""))


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    default: str
    help: str
    parse: Parser = text


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "CDS_DATA_DIR",
        "./var",
        "Directory for the SQLite database, client keys and "
        "other local state; created on first start.",
    ),
    Setting(
        "CDS_DATABASE_URL",
        "",
        "SQLAlchemy database URL. Empty: SQLite file "
        "`mkopper-cds.sqlite3` in CDS_DATA_DIR. PostgreSQL: "
        "`postgresql+psycopg://user:pass@host/db`.",
    ),
    Setting("CDS_HOST", "127.0.0.1", "Address `mkopper-cds serve` binds to."),
    Setting("CDS_PORT", "8080", "Port `mkopper-cds serve` listens on.", parse=integer(1)),
    Setting(
        "CDS_WORKERS", "2", "gunicorn worker processes for `mkopper-cds serve`.", parse=integer(1)
    ),
    Setting(
        "CDS_PUBLIC_URL",
        "",
        "External base URL of the service (e.g. "
        "`https://cds.example.org`), used for the JWT audience behind a proxy. Empty: "
        "the URL the request arrived on.",
    ),
    Setting(
        "CDS_CORS_ORIGINS",
        "",
        "Comma-separated browser origins allowed to call the "
        "service (e.g. `https://sandbox.cds-hooks.org`). Empty: no cross-origin access.",
        parse=comma_list,
    ),
    Setting(
        "CDS_LANGUAGE",
        "nb",
        "Language of card text: `nb` (Norwegian bokmål) or `en`.",
        parse=one_of("nb", "en"),
    ),
    Setting(
        "CDS_CONTENT_FILE",
        "",
        "Path to a guideline content file (TOML). Empty: the content shipped with the package.",
    ),
    Setting(
        "CDS_MAX_CARDS", "3", "Most cards in one response, the most urgent first.", parse=integer(1)
    ),
    Setting(
        "CDS_MAX_BODY_BYTES",
        "5242880",
        "Largest request body accepted (413 above).",
        parse=integer(1),
    ),
    Setting(
        "CDS_ALLOWED_FHIR_SERVERS",
        "",
        "Comma-separated FHIR base URLs the service may "
        "call with the EHR's token. A `fhirServer` not listed gets no outbound call.",
        parse=allowlist,
    ),
    Setting(
        "CDS_PREFETCH_BUDGET_MS",
        "1500",
        "Time budget for fetching missing prefetch data from the FHIR server, in milliseconds.",
        parse=integer(1),
    ),
    Setting(
        "CDS_FHIR_TIMEOUT_MS",
        "1000",
        "Timeout of each FHIR HTTP call, in milliseconds "
        "(never beyond what is left of the budget).",
        parse=integer(1),
    ),
    Setting(
        "CDS_FHIR_CA_BUNDLE",
        "",
        "Path to a CA bundle (PEM) for FHIR servers signed by a hospital CA. Empty: the "
        "public CAs. TLS is always verified.",
    ),
    Setting(
        "CDS_FHIR_MAX_PAGES", "5", "Most Bundle pages followed per prefetch key.", parse=integer(1)
    ),
    Setting(
        "CDS_TRUSTED_CLIENTS",
        "",
        "Path to the JSON file of trusted CDS clients (JWT issuers and their key sets).",
    ),
    Setting(
        "CDS_ALLOW_UNSIGNED",
        "0",
        "`1`: accept calls without a JWT from loopback "
        "addresses only (development). Never in production.",
        parse=boolean,
    ),
    Setting(
        "CDS_JWT_ALGORITHMS",
        "ES384,RS384",
        "Accepted JWT algorithms (ES256 and RS256 "
        "may be added). `none` and HMAC are always refused.",
    ),
    Setting(
        "CDS_REQUIRE_AUTH_DISCOVERY", "0", "`1`: discovery also requires a JWT.", parse=boolean
    ),
    Setting(
        "CDS_JWKS_CACHE_SECONDS",
        "3600",
        "How long a key set fetched from a `jku` is cached.",
        parse=integer(0),
    ),
    Setting("CDS_LOG_LEVEL", "INFO", "Log level (DEBUG, INFO, WARNING, ERROR)."),
    Setting(
        "CDS_PATIENT_HASH_SECRET",
        "",
        "Secret for the keyed hash (HMAC-SHA256) of "
        "patient ids in suppression records. Empty: a key kept in CDS_DATA_DIR. "
        "Comma-separated to rotate: the first hashes new records, the others are still "
        "recognised. Set it (the same everywhere) when several instances share a database.",
        parse=comma_list,
    ),
    Setting(
        "CDS_FEEDBACK_RETENTION_DAYS",
        "90",
        "Days feedback (and the record of the cards shown) is kept for the dashboard; older rows "
        "are deleted on write and by `mkopper-cds purge-suppressions`. Comments may hold "
        "patient data: keep it short.",
        parse=integer(1),
    ),
    Setting(
        "CDS_ADMIN_USER",
        "admin",
        "User name for the feedback dashboard `/admin/feedback` (HTTP Basic).",
    ),
    Setting(
        "CDS_ADMIN_PASSWORD",
        "",
        "Password for the feedback dashboard (12 characters or more). Empty: the dashboard is off.",
    ),
    Setting(
        "CDS_ADMIN_ALLOW_REMOTE",
        "0",
        "`1`: serve the dashboard to non-loopback addresses too (put it behind TLS then).",
        parse=boolean,
    ),
    Setting(
        "CDS_SMART_CLIENT_ID",
        "mkopper-cds",
        "OAuth client id of the SMART on FHIR page, as registered in the EHR "
        "(public client, PKCE).",
    ),
    Setting(
        "CDS_SMART_SCOPE_VERSION",
        "1",
        "Scope syntax of the SMART page's default scopes: `1` (SMART App Launch 1, "
        "`patient/<Type>.read`, for EHRs that know only those) or `2` (SMART App Launch 2, "
        "`patient/<Type>.rs`). Ignored when CDS_SMART_SCOPES is set.",
        parse=one_of("1", "2"),
    ),
    Setting(
        "CDS_SMART_SCOPES",
        "",
        "Scopes the SMART page asks for (space- or comma-separated). Empty: `launch` and "
        "`patient/<Type>.read` for each resource type the patient-view and encounter-start "
        "services read.",
    ),
    Setting(
        "CDS_SMART_REDIRECT_URL",
        "",
        "Redirect URL registered for the SMART page. Empty: CDS_PUBLIC_URL (or the URL the "
        "request arrived on) + `/smart/callback`.",
    ),
    Setting(
        "CDS_SMART_SESSION_MINUTES",
        "60",
        "Longest life of a SMART page session (never beyond the access token's `expires_in`).",
        parse=integer(1),
    ),
    Setting(
        "CDS_SMART_FRAME_ANCESTORS",
        "",
        "Origins allowed to show the SMART page in a frame (CSP `frame-ancestors`), e.g. the "
        "EHR's origin. Empty: no framing.",
        parse=comma_list,
    ),
    Setting(
        "CDS_SMART_LAUNCH_RATE",
        "30",
        "SMART launches a client address may start per minute (per worker process). Behind a "
        "reverse proxy every client has the proxy's address: raise it to what the whole "
        "hospital starts in a minute.",
        parse=integer(1),
    ),
    Setting(
        "CDS_SMART_COOKIE_SAMESITE",
        "Lax",
        "SameSite of the SMART page's cookies. `Lax` for a top-level window or same-site "
        "frame; `None` when the EHR frames the page from another site.",
    ),
    Setting(
        "CDS_SERVICE_URL",
        "http://127.0.0.1:8080",
        "Base URL of the CDS service that `mkopper-cds call` calls (its `--service`).",
    ),
    Setting(
        "CDS_FHIR_TOKEN",
        "",
        "Bearer token for the FHIR server, used by `mkopper-cds seed` and `call` only "
        "(`call` passes it on as `fhirAuthorization`). Never read by the service.",
    ),
)

DEFAULTS: dict[str, str] = {s.name: s.default for s in SETTINGS}


def load_settings(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Every setting from the environment, then the overrides (tests), each typed by its
    row's parser. Names outside the table pass through unparsed."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {name: env.get(name, default) for name, default in DEFAULTS.items()}
    if overrides:
        raw.update(overrides)
    return {
        name: _PARSERS[name](name, value) if name in _PARSERS else value
        for name, value in raw.items()
    }


_PARSERS: dict[str, Parser] = {s.name: s.parse for s in SETTINGS}


# Older spellings of the parsers, for call sites that pass a value through once more.
def as_bool(value: Any) -> bool:
    return boolean("", value)


def as_list(value: Any) -> list[str]:
    return comma_list("", value)


def as_int(name: str, value: Any) -> int:
    parsed: int = integer()(name, value)
    return parsed


def data_dir(settings: Mapping[str, Any]) -> Path:
    path = Path(str(settings["CDS_DATA_DIR"])).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def database_url(settings: Mapping[str, Any]) -> str:
    url = str(settings.get("CDS_DATABASE_URL") or "")
    if url:
        return url
    return f"sqlite:///{(data_dir(settings) / 'mkopper-cds.sqlite3').resolve()}"
