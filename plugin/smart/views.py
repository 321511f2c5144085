"""SMART on FHIR page: the guideline's advice inside EHRs without CDS Hooks (DIPS Arena).

EHR launch (SMART App Launch 2.x): the EHR opens ``/smart/launch?iss=&launch=``
(a tester may open ``/smart/standalone?iss=`` and pick the patient at the EHR);
``iss`` must be an allowed FHIR server (the CDS service's allowlist). The app
reads ``{iss}/.well-known/smart-configuration`` and sends the browser to the
authorisation endpoint with PKCE (S256), a random ``state`` and ``aud=iss``.
``/smart/callback`` takes the pending launch by ``state`` (once), checks that
the browser is the one that started it, exchanges the code and keeps the
token response in a server-side session. ``/smart/`` runs the registry's
patient-view services (and encounter-start ones when the launch has an
encounter) exactly as a CDS call would, with data fetched from ``iss`` through
the same prefetch resolution, and renders their cards.

The browser holds two opaque cookies at most (the launch binding, then the
session id); the access token never leaves the server. Authlib builds the
authorisation URL; the smart-configuration and token calls go through the FHIR
client's guards (``cds_hooks.fhir.guarded_json``: one deadline, a size cap after
decompression, no redirects). The launch endpoints need no login, so each client
address may start only so many launches a minute (per worker process).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from authlib.integrations.requests_client import OAuth2Session
from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from urllib3.util import parse_url
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from cds_hooks.errors import CdsError, DataUnavailable, FhirAuthError, FhirError, FhirNotAllowed
from cds_hooks.fhir import ClientLimits, FhirClient, guarded_json, guarded_url
from cds_hooks.knowledge import Content, Language
from cds_hooks.models import FhirAuthorization, HookRequest
from cds_hooks.services import IssuedCard
from plugin.api.pipeline import get_pipeline
from plugin.api.views import get_store
from plugin.config import as_list
from plugin.security.network import is_loopback
from plugin.security.ratelimit import FixedWindow, TooManyRequests, client_key
from plugin.smart import render as smart_render
from plugin.smart.sessions import ACTIVE, PENDING, SessionStore, new_secret
from plugin.storage.store import utcnow

log = logging.getLogger(__name__)

bp = Blueprint(
    "smart",
    __name__,
    url_prefix="/smart",
    template_folder="templates",
    static_folder="static",
)

# Hooks the page answers, in the order their cards are merged.
PATIENT_HOOK = "patient-view"
ENCOUNTER_HOOK = "encounter-start"
LAUNCH_TTL_SECONDS = 600
# Each OAuth call (smart-configuration, token) as a whole, and each read within it.
HTTP_BUDGET_SECONDS = 5.0
HTTP_READ_SECONDS = 2.0
MAX_OAUTH_BYTES = 256 * 1024  # a smart-configuration or token response, after decompression
CONFIGURATION_CACHE_SECONDS = 300
# Launches (EHR and standalone) per client address and minute, per worker process.
MAX_PARAM_CHARS = 2048
# FHIR ids: [A-Za-z0-9\-\.]{1,64}. Anything else in a token response is refused.
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


class SmartProblem(Exception):
    """A launch or page problem with its own error page (``kind`` names the texts)."""

    def __init__(self, kind: str, status: int, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.status = status
        self.reason = reason  # for the log line: never a token, a code or a patient id


# --- Sessions, client registration and scopes --------------------------------


def get_sessions() -> SessionStore:
    store: SessionStore = current_app.extensions["smart_sessions"]
    return store


def client_id() -> str:
    return str(current_app.config["CDS_SMART_CLIENT_ID"])


def redirect_uri() -> str:
    configured = str(current_app.config["CDS_SMART_REDIRECT_URL"] or "")
    if configured:
        return configured
    public = str(current_app.config.get("CDS_PUBLIC_URL") or "").rstrip("/")
    if public:
        return public + url_for("smart.callback")
    return url_for("smart.callback", _external=True)


def page_hooks() -> tuple[str, ...]:
    return (PATIENT_HOOK, ENCOUNTER_HOOK)


def requested_scopes() -> str:
    """CDS_SMART_SCOPES, or ``launch`` plus read access to what the services' prefetch reads."""
    configured = " ".join(as_list(str(current_app.config["CDS_SMART_SCOPES"]).replace(" ", ",")))
    if configured:
        return configured
    types: set[str] = set()
    for service in get_pipeline().registry:
        if service.hook in page_hooks():
            for template in service.prefetch.values():
                resource_type = re.split(r"[/?]", template, maxsplit=1)[0]
                if re.fullmatch(r"[A-Z][A-Za-z]+", resource_type):
                    types.add(resource_type)
    # SMART App Launch 2 reads "rs" (read and search); version 1 reads ".read".
    access = "rs" if current_app.config["CDS_SMART_SCOPE_VERSION"] == "2" else "read"
    return " ".join(["launch", *(f"patient/{name}.{access}" for name in sorted(types))])


def session_seconds() -> int:
    minutes: int = current_app.config["CDS_SMART_SESSION_MINUTES"]
    return 60 * minutes


def fhir_base(url: str) -> str:
    return url.strip().rstrip("/")


def allowed_fhir_server(iss: str) -> bool:
    """The CDS service's own allowlist (CDS_ALLOWED_FHIR_SERVERS): the one its fetches use."""
    return get_pipeline().fhir.allowed.allows(iss)


def _acceptable_endpoint(url: object) -> bool:
    """https, or http on loopback (the test authorisation server)."""
    if not isinstance(url, str) or len(url) > MAX_PARAM_CHARS:
        return False
    try:
        parts = parse_url(guarded_url(url))  # the parser that connects, as for FHIR calls
    except ValueError:
        return False
    if parts.scheme == "https" and parts.host:
        return True
    return parts.scheme == "http" and is_loopback(parts.host)


# --- Cookies -----------------------------------------------------------------


def _secure_cookies() -> bool:
    # Secure everywhere except plain http on a loopback address (tests, `make run`), where a
    # browser would drop a Secure cookie. An https CDS_PUBLIC_URL settles it whatever Host
    # header or scheme a proxy forwards: the browser is on https, so Secure holds.
    if str(current_app.config["CDS_PUBLIC_URL"]).startswith("https://"):
        return True
    return not (request.scheme == "http" and is_loopback(urlsplit(request.host_url).hostname))


def cookie_name(base: str) -> str:
    # The __Host- prefix makes the browser refuse the cookie unless it is Secure, host-only
    # and Path=/, so a sibling subdomain cannot plant or overwrite it.
    return f"__Host-{base}" if _secure_cookies() else base


def _set_cookie(response: BaseResponse, base: str, value: str, max_age: int) -> None:
    response.set_cookie(
        cookie_name(base),
        value,
        max_age=max_age,
        path="/",
        secure=_secure_cookies(),
        httponly=True,
        samesite=str(current_app.config["CDS_SMART_COOKIE_SAMESITE"]),
    )


def _clear_cookie(response: BaseResponse, base: str) -> None:
    response.delete_cookie(
        cookie_name(base),
        path="/",
        secure=_secure_cookies(),
        httponly=True,
        samesite=str(current_app.config["CDS_SMART_COOKIE_SAMESITE"]),
    )


LAUNCH_COOKIE = "mkopper-smart-launch"
SESSION_COOKIE = "mkopper-smart"


# --- Launch ------------------------------------------------------------------


def _param(name: str, *, required: bool = True) -> str:
    value = request.args.get(name, "")
    if len(value) > MAX_PARAM_CHARS or (required and not value.strip()):
        raise SmartProblem("launch-invalid", 400, f"parameter {name} missing or too long")
    return value


def oauth_client() -> FhirClient:
    client: FhirClient = current_app.extensions["smart_http"]
    return client


class ConfigurationCache:
    """Fetched smart-configurations per issuer for a short time, so launches do not refetch."""

    def __init__(self, clock: Any, ttl_s: float = CONFIGURATION_CACHE_SECONDS) -> None:
        self.clock = clock
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def get(self, iss: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._entries.get(iss)
        if entry is None or self.clock() - entry[0] >= self.ttl_s:
            return None
        return entry[1]

    def put(self, iss: str, config: dict[str, Any]) -> None:
        with self._lock:
            self._entries[iss] = (self.clock(), config)


def _fetch_json(method: str, url: str, what: str, form: dict[str, str] | None = None) -> Any:
    """One OAuth call through the FHIR client's guards; transport failures become problems."""
    deadline = time.monotonic() + HTTP_BUDGET_SECONDS
    try:
        return guarded_json(oauth_client(), method, url, deadline, form=form)
    except FhirError as exc:
        kind = "fhir-unavailable" if what == "smart-configuration" else "authorization-failed"
        raise SmartProblem(kind, 502, f"{what}: {exc.code}") from None


def smart_configuration(iss: str) -> dict[str, Any]:
    """``{iss}/.well-known/smart-configuration``, checked for what the launch needs."""
    cache: ConfigurationCache = current_app.extensions["smart_configurations"]
    cached = cache.get(iss)
    if cached is not None:
        return cached
    url = fhir_base(iss) + "/.well-known/smart-configuration"
    status, config = _fetch_json("GET", url, "smart-configuration")
    if status != 200:
        raise SmartProblem("fhir-unavailable", 502, f"smart-configuration: {status}")
    if not isinstance(config, dict):
        raise SmartProblem("fhir-unavailable", 502, "smart-configuration: not a JSON object")
    for key in ("authorization_endpoint", "token_endpoint"):
        if not _acceptable_endpoint(config.get(key)):
            raise SmartProblem("authorization-failed", 502, f"smart-configuration: bad {key}")
    methods = config.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        raise SmartProblem("authorization-failed", 502, "smart-configuration: no S256")
    cache.put(iss, config)
    return config


def limit_launches() -> None:
    """The launch endpoints need no login: each client address gets so many a minute."""
    limiter: FixedWindow = current_app.extensions["smart_launch_limit"]
    wait = limiter.hit(client_key(request.remote_addr))
    if wait:
        raise TooManyRequests(wait, "too many launches from one address")


@bp.get("/launch")
def launch() -> BaseResponse:
    """EHR launch: check ``iss``, then send the browser to the EHR's authorisation endpoint."""
    g.call_log = {"service": "smart", "hook": "launch"}
    limit_launches()
    iss = fhir_base(_param("iss"))
    launch_id = _param("launch")
    if not allowed_fhir_server(iss):
        raise SmartProblem("fhir-not-allowed", 403, "iss not on CDS_ALLOWED_FHIR_SERVERS")
    config = smart_configuration(iss)
    # A launch value opens one session: a replayed launch URL is refused even within its
    # lifetime. The JWT replay cache (in the database) serves all workers.
    store = get_store()
    expires = store.clock() + timedelta(seconds=LAUNCH_TTL_SECONDS)
    if not store.remember_jti(f"smart-launch\n{iss}\n{launch_id}", expires):
        raise SmartProblem("launch-invalid", 400, "launch value already used")
    return authorize_redirect(iss, config, requested_scopes(), {"launch": launch_id})


@bp.get("/standalone")
def standalone() -> BaseResponse:
    """Standalone launch (for testers): the EHR's own patient picker chooses the patient."""
    g.call_log = {"service": "smart", "hook": "standalone"}
    limit_launches()
    iss = fhir_base(_param("iss"))
    if not allowed_fhir_server(iss):
        raise SmartProblem("fhir-not-allowed", 403, "iss not on CDS_ALLOWED_FHIR_SERVERS")
    config = smart_configuration(iss)
    # SMART: `launch/patient` asks the authorisation server for a patient in context
    # where an EHR launch would pass `launch`.
    scopes = ["launch/patient" if s == "launch" else s for s in requested_scopes().split()]
    return authorize_redirect(iss, config, " ".join(scopes), {})


def authorize_redirect(
    iss: str, config: Mapping[str, Any], scope: str, extra: Mapping[str, str]
) -> BaseResponse:
    """Keep the pending launch server-side and send the browser to authorise (PKCE S256)."""
    state = new_secret()
    binding = new_secret()
    verifier = new_secret() + new_secret()  # 86 characters: within RFC 7636's 43..128
    callback = redirect_uri()
    get_sessions().put(
        state,
        PENDING,
        {
            "iss": iss,
            "token_endpoint": config["token_endpoint"],
            "verifier": verifier,
            "binding": binding,
            "redirect_uri": callback,
        },
        LAUNCH_TTL_SECONDS,
    )
    oauth = OAuth2Session(
        client_id(),
        scope=scope,
        redirect_uri=callback,
        code_challenge_method="S256",
    )
    url, _ = oauth.create_authorization_url(
        config["authorization_endpoint"],
        state=state,
        code_verifier=verifier,
        aud=iss,
        **extra,
    )
    response = redirect(url, code=302)
    _set_cookie(response, LAUNCH_COOKIE, binding, LAUNCH_TTL_SECONDS)
    return response


# --- Callback ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LaunchContext:
    patient: str
    encounter: str | None
    scope: str
    expires_in: int


def launch_context(token: Mapping[str, Any]) -> LaunchContext:
    """What the page needs from the token response; refuses ids that are not FHIR ids."""
    if not isinstance(token.get("access_token"), str) or not token["access_token"]:
        raise SmartProblem("authorization-failed", 502, "token response without access_token")
    patient = token.get("patient")
    if not isinstance(patient, str) or not FHIR_ID.match(patient):
        raise SmartProblem("no-patient", 400, "token response without a valid patient")
    encounter = token.get("encounter")
    if encounter is not None and (not isinstance(encounter, str) or not FHIR_ID.match(encounter)):
        encounter = None
    expires_in = token.get("expires_in")
    lifetime = expires_in if isinstance(expires_in, int) and expires_in > 0 else session_seconds()
    scope = token.get("scope")
    return LaunchContext(
        patient=patient,
        encounter=encounter,
        scope=scope if isinstance(scope, str) and scope else requested_scopes(),
        expires_in=min(lifetime, session_seconds()),
    )


@bp.get("/callback")
def callback() -> BaseResponse:
    """The redirect URL: take the pending launch (once), exchange the code, open a session."""
    g.call_log = {"service": "smart", "hook": "callback"}
    state = _param("state")
    pending = get_sessions().take(state, PENDING)
    if pending is None:
        raise SmartProblem("launch-invalid", 400, "state unknown, expired or already used")
    # The state alone could have been replayed into another browser (login CSRF): the launch
    # must finish in the browser that began it, which holds the binding cookie.
    if request.cookies.get(cookie_name(LAUNCH_COOKIE)) != pending["binding"]:
        raise SmartProblem("launch-invalid", 400, "launch binding cookie missing or wrong")
    error = request.args.get("error")
    if error:
        if error == "access_denied":
            raise SmartProblem("consent-denied", 403, "authorisation denied")
        raise SmartProblem("authorization-failed", 502, f"authorisation error {error[:40]!r}")
    code = _param("code")
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": pending["redirect_uri"],
        "client_id": client_id(),  # a public client: no secret (PKCE instead)
        "code_verifier": pending["verifier"],
    }
    status, token = _fetch_json("POST", pending["token_endpoint"], "token endpoint", form)
    if not isinstance(token, dict):
        raise SmartProblem("authorization-failed", 502, "token endpoint: not a JSON object")
    if status != 200 or "error" in token:
        error_code = token.get("error")
        name = error_code[:40] if isinstance(error_code, str) else str(status)
        raise SmartProblem("authorization-failed", 502, f"token endpoint: {name}")
    if str(token.get("token_type", "")).lower() != "bearer":
        raise SmartProblem("authorization-failed", 502, "token endpoint: not a Bearer token")
    context = launch_context(token)
    session_id = new_secret()
    get_sessions().put(
        session_id,
        ACTIVE,
        {
            "iss": pending["iss"],
            "access_token": token["access_token"],
            "scope": context.scope,
            "patient": context.patient,
            "encounter": context.encounter,
            "expires_in": context.expires_in,
        },
        context.expires_in,
    )
    response = redirect(url_for("smart.page"), code=303)
    _clear_cookie(response, LAUNCH_COOKIE)
    _set_cookie(response, SESSION_COOKIE, session_id, context.expires_in)
    return response


# --- The page ----------------------------------------------------------------


def hook_requests(session: Mapping[str, Any]) -> list[HookRequest]:
    """The CDS Hooks requests an EHR with CDS Hooks would send for this chart."""
    authorization = FhirAuthorization(
        access_token=session["access_token"],
        token_type="Bearer",  # noqa: S106 - the token type, not a secret
        expires_in=int(session["expires_in"]),
        scope=session["scope"],
        subject=client_id(),
        patient=session["patient"],
    )
    # patient-view carries the encounter too when there is one (the hook's optional
    # encounterId), so both hooks judge the same care setting and their cards coincide.
    context: dict[str, Any] = {"patientId": session["patient"]}
    hooks = [PATIENT_HOOK]
    if session.get("encounter"):
        context["encounterId"] = session["encounter"]
        hooks.append(ENCOUNTER_HOOK)
    return [
        HookRequest(
            hook=hook,
            hookInstance=str(uuid.uuid4()),
            fhirServer=session["iss"],
            fhirAuthorization=authorization,
            context=dict(context),
        )
        for hook in hooks
    ]


def evaluate(session: Mapping[str, Any]) -> list[IssuedCard]:
    """Run every service for the launch's hooks; one card per finding, most urgent first."""
    issued: list[IssuedCard] = []
    seen: set[str] = set()
    pipeline = get_pipeline()
    for hook_request in hook_requests(session):
        for service in pipeline.registry:
            if service.hook != hook_request.hook:
                continue
            evaluation = pipeline.evaluate(service, hook_request)
            for item in evaluation.issued:
                if item.finding not in seen:
                    seen.add(item.finding)
                    issued.append(item)
    order = {
        id(card): n
        for n, card in enumerate(smart_render.most_urgent_first(item.card for item in issued))
    }
    return sorted(issued, key=lambda item: order[id(item.card)])


@dataclass(frozen=True, slots=True)
class GuidelineView:
    line: str
    links: tuple[smart_render.LinkView, ...]


def guideline_view(lang: Language, texts: Mapping[str, str]) -> GuidelineView:
    content: Content = current_app.extensions["smart_content"]
    guideline = content.guideline
    return GuidelineView(
        line=texts["guideline"].format(
            title=guideline.title.get(lang), owner=guideline.owner, version=guideline.version
        ),
        links=tuple(
            smart_render.LinkView(label=link.label.get(lang), url=link.url)
            for link in content.links.values()
        ),
    )


def language() -> Language:
    lang: Language = current_app.config["CDS_LANGUAGE"]
    return lang


@bp.get("/")
def page() -> Response:
    g.call_log = {"service": "smart", "hook": "page"}
    session_id = request.cookies.get(cookie_name(SESSION_COOKIE), "")
    session = get_sessions().get(session_id, ACTIVE)
    if session is None:
        raise SmartProblem("session-expired", 401, "no session")
    try:
        issued = evaluate(session)
    except FhirAuthError:
        # The EHR no longer accepts the token (expired or revoked): the session is over.
        get_sessions().drop(session_id)
        raise SmartProblem("session-expired", 401, "FHIR server refused the token") from None
    g.call_log["cards"] = len(issued)
    texts = smart_render.page_texts(language())
    html = render_template(
        "smart/page.html",
        t=texts,
        cards=[smart_render.card_view(item) for item in issued],
        guideline=guideline_view(language(), texts),
    )
    return Response(html, status=200, mimetype="text/html")


# --- Errors and headers ------------------------------------------------------


def _problem_of(error: Exception) -> SmartProblem:
    if isinstance(error, SmartProblem):
        return error
    if isinstance(error, TooManyRequests):
        return SmartProblem("rate-limited", 429, error.message)
    if isinstance(error, FhirNotAllowed):
        return SmartProblem("fhir-not-allowed", 403, error.code)
    if isinstance(error, FhirError | DataUnavailable):
        return SmartProblem("fhir-unavailable", 502, error.code)
    if isinstance(error, CdsError) and error.status < 500:
        return SmartProblem("launch-invalid", error.status, error.code)
    if isinstance(error, HTTPException):
        status = error.code or 500
        return SmartProblem("launch-invalid" if status < 500 else "internal", status, error.name)
    return SmartProblem("internal", 500, type(error).__name__)


def error_page(error: Exception) -> Response:
    problem = _problem_of(error)
    if problem.status >= 500 and problem.kind == "internal":
        log.error("smart page failed: %s", problem.reason, exc_info=not isinstance(error, CdsError))
    else:
        log.info("smart %s: %s", problem.kind, problem.reason)
    texts = smart_render.page_texts(language())
    key = problem.kind.replace("-", "_")
    html = render_template(
        "smart/error.html",
        t=texts,
        kind=problem.kind,
        title=texts[f"error_{key}_title"],
        text=texts[f"error_{key}_text"],
        retry=problem.kind == "fhir-unavailable",
        reopen=problem.kind not in ("fhir-not-allowed",),
    )
    response = Response(html, status=problem.status, mimetype="text/html")
    if isinstance(error, TooManyRequests):
        response.headers["Retry-After"] = str(error.retry_after)
    if problem.kind in ("session-expired", "launch-invalid", "consent-denied"):
        _clear_cookie(response, SESSION_COOKIE)
    return response


def security_headers(response: Response) -> Response:
    """A strict CSP: no script at all, styles from this origin only, nothing else loaded.
    The headers every response carries (nosniff, no referrer, no store) come from
    ``plugin.api.headers``."""
    ancestors = " ".join(current_app.config["CDS_SMART_FRAME_ANCESTORS"]) or "'none'"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
        f"form-action 'none'; frame-ancestors {ancestors}"
    )
    if ancestors == "'none'":
        response.headers["X-Frame-Options"] = "DENY"
    return response


bp.register_error_handler(Exception, error_page)
bp.after_request(security_headers)


def init_app(app: Flask, content: Content) -> None:
    """Register the page; ``content`` is the app's one loaded guideline content."""
    app.extensions["smart_content"] = content
    store = app.extensions["cds_store"]
    app.extensions["smart_sessions"] = SessionStore(store.engine, store.clock)
    # The OAuth calls go through the FHIR client's guards, with a small size cap of their own.
    app.extensions["smart_http"] = FhirClient(
        ClientLimits(
            timeout_s=HTTP_READ_SECONDS,
            connect_timeout_s=HTTP_READ_SECONDS,
            max_pages=1,
            max_bytes=MAX_OAUTH_BYTES,
            pool_size=4,
        ),
        ca_bundle=app.config.get("CDS_FHIR_CA_BUNDLE") or None,
    )
    # A test's injected clock drives the limits; otherwise the monotonic one (no wall jumps).
    seconds = time.monotonic if store.clock is utcnow else (lambda: store.clock().timestamp())
    app.extensions["smart_configurations"] = ConfigurationCache(seconds)
    app.extensions["smart_launch_limit"] = FixedWindow(
        app.config["CDS_SMART_LAUNCH_RATE"], 60, clock=seconds
    )
    # Authlib logs token requests and issued tokens at DEBUG: never let those reach a log.
    authlib_log = logging.getLogger("authlib")
    if authlib_log.level < logging.INFO:
        authlib_log.setLevel(logging.INFO)
    app.register_blueprint(bp)
