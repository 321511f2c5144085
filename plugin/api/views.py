"""HTTP views: discovery, service calls, feedback, health.

A service call runs in phases (auth, parse, then the shared pipeline's prefetch, rules and
storage, then cards; ``pipeline.py``); each is timed and the totals go into one structured
log line per call, which never carries a patient id, a token or resource content.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from flask import Blueprint, Response, current_app, g, jsonify, request
from pydantic import BaseModel, ValidationError

from cds_hooks.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from cds_hooks.fhir import ClientLimits, json_containers
from cds_hooks.models import Discovery, Feedback, HookRequest
from cds_hooks.services import ServiceRegistry
from plugin.api import metrics
from plugin.api.json_codec import loads_strict, may_escape_surrogate
from plugin.api.pipeline import get_pipeline, phase
from plugin.api.skim import SKIM_FROM_BYTES, skim_body
from plugin.context import this_app, this_g, this_request
from plugin.security import auth
from plugin.storage import suppression
from plugin.storage.store import Store

log = logging.getLogger("plugin.calls")

bp = Blueprint("cds", __name__)

ModelT = TypeVar("ModelT", bound=BaseModel)


def get_registry() -> ServiceRegistry:
    registry: ServiceRegistry = this_app().extensions["cds_registry"]
    return registry


def get_store() -> Store:
    store: Store = this_app().extensions["cds_store"]
    return store


def _validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    details = []
    for err in exc.errors(include_input=False, include_url=False):
        path = ".".join(str(part) for part in err["loc"]) or "(body)"
        details.append({"path": path, "problem": err["msg"]})
    return details[:20]


# JSON objects and arrays in one request body, counted before it is parsed, as for a FHIR
# server's answer: each costs memory and time to build (5 MB of `{}` is almost two million of
# them), and real bodies hold about 20 per kB (the large record: 17,000 in 900 kB).
MAX_BODY_CONTAINERS = ClientLimits().max_containers


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def parse_body(
    model: type[ModelT], reads_condition: Callable[[bytes], bool] | None = None
) -> ModelT:
    """Parse the JSON body into ``model``; 415/400 name what is wrong, never the value.

    With ``reads_condition`` (the service's :attr:`~cds_hooks.services.CdsService.reads_condition`)
    a large body is parsed without the prefetched Conditions the service does not read
    (``plugin.api.skim``)."""
    req = this_request()
    if not req.mimetype or req.mimetype != "application/json":
        raise UnsupportedMediaType()
    raw = req.get_data(cache=False)
    if json_containers(raw) > MAX_BODY_CONTAINERS:
        raise PayloadTooLarge(
            f"The body holds more than {MAX_BODY_CONTAINERS:,} JSON objects and arrays."
        )
    skimmed = None
    if reads_condition is not None and len(raw) >= SKIM_FROM_BYTES:
        skimmed = skim_body(raw, reads_condition)
    data = _parse_whole(raw) if skimmed is None else skimmed
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(
            "The request does not match the CDS Hooks 2.0.1 schema.",
            details=_validation_details(exc),
        ) from None
    except RecursionError:
        raise InvalidRequest("The body is nested too deeply.") from None


def _parse_whole(raw: bytes) -> dict[str, Any]:
    try:
        # Strict UTF-8 (RFC 8259): json.loads on bytes would decode with "surrogatepass" and let
        # an encoded lone surrogate (b"\xed\xa0\x80") through as text. loads_strict is
        # json.loads(raw.decode("utf-8")), with orjson wherever it gives the same answer.
        data = loads_strict(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidRequest("The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The body must be a JSON object.")
    # Only a body that may escape a lone surrogate is walked.
    if may_escape_surrogate(raw) and _has_lone_surrogate(data):
        raise InvalidRequest("The body contains text that is not valid Unicode.")
    return data


@bp.get("/cds-services")
def discovery() -> Response:
    if current_app.config["CDS_REQUIRE_AUTH_DISCOVERY"]:
        auth.authenticate(request)
    body = Discovery(services=get_registry().descriptors()).wire()
    return jsonify(body)


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    call_log: dict[str, Any] = {"service": service_id}
    this_g().call_log = call_log
    with phase("auth"):
        caller = auth.authenticate(this_request())
    service = get_registry().get(service_id)
    with phase("parse"):
        hook_request = parse_body(HookRequest, service.reads_condition)
    call_log.update(hook=hook_request.hook, hookInstance=hook_request.hookInstance[:64])
    issued = get_pipeline().run(service, hook_request, caller)
    with phase("cards"):
        # What CdsResponse(cards=...).wire() gives (the service sends no systemActions); a card
        # rendered from a template gives its wire form from the template's, made once.
        return jsonify({"cards": [item.wire() for item in issued]})


@bp.post("/cds-services/<service_id>/feedback")
def post_feedback(service_id: str) -> Response:
    """Store the outcomes of cards issued to this caller, once each, and the suppressions they
    make, in one transaction committed before the answer.

    A card is joined by opening its uuid (a sealed token: ``plugin.storage.token``). The
    answer counts what happened: ``recorded`` outcomes stored now, ``duplicates`` (a retry, or
    a card whose outcome is already stored: nothing changes) and ``unknown`` (a card this
    service did not issue to this caller, an altered uuid, or one past retention: not
    stored)."""
    g.call_log = {"service": service_id, "hook": "feedback"}
    with phase("auth"):
        caller = auth.authenticate(request)
    service = get_registry().get(service_id)
    with phase("parse"):
        body = parse_body(Feedback)
    suppressions = suppression.get_suppressions()
    with phase("storage"):
        joined = suppressions.join(service.id, body.feedback, caller)
        result = get_store().record_feedback(service.id, joined, after=suppressions.suppress)
    g.call_log["suppressions"] = result.suppressions
    counts = {
        "received": len(body.feedback),
        "recorded": len(result.recorded),
        "duplicates": result.duplicates,
        "unknown": result.unknown,
    }
    g.call_log["feedback"] = counts
    metrics.count_feedback(service.id, counts)
    return jsonify(counts)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    get_store().ping()
    return jsonify({"status": "ready", "services": len(get_registry())})


def _log_line(call_log: dict[str, Any]) -> str:
    """``json.dumps(call_log, separators=(",", ":"), sort_keys=True)``, by orjson (0.6 µs rather
    than 5 µs) wherever that gives the same text: an ASCII line without DEL (json escapes the
    rest), of values both print alike (the timings are rounded to 0.01 ms: no float needs an
    exponent)."""
    try:
        line = orjson.dumps(call_log, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:  # a lone surrogate, an integer past 64 bits
        line = ""
    if line and line.isascii() and "\x7f" not in line:
        return line
    return json.dumps(call_log, separators=(",", ":"), sort_keys=True)


def log_call(response: Response) -> Response:
    """One structured line per CDS call: no patient ids, no tokens, no resource content."""
    context = this_g()
    call_log = context.get("call_log")
    if call_log is not None:
        call_log["status"] = response.status_code
        call_log["ms"] = context.get("timings", {})
        if log.isEnabledFor(logging.INFO):
            log.info(_log_line(call_log))
    return response
