"""The one error handler: every error leaves as the same JSON shape, never a stack trace."""

from __future__ import annotations

import logging
import traceback
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from cds_hooks.errors import (
    CdsError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)

_HTTP_TO_ERROR: dict[int, type[CdsError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
}


FHIR_JSON = "application/fhir+json"
# FHIR issue-type codes (http://hl7.org/fhir/issue-type) for each HTTP status.
_ISSUE_TYPE: dict[int, str] = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    412: "incomplete",
    413: "too-long",
    415: "not-supported",
    429: "throttled",
}


def wants_fhir_json() -> bool:
    """The client asked for application/fhir+json over plain JSON (CDS Hooks 3.0 ballot)."""
    accept = request.accept_mimetypes
    named = any(mimetype == FHIR_JSON and quality > 0 for mimetype, quality in accept)
    return named and accept[FHIR_JSON] >= accept["application/json"]


def operation_outcome(error: CdsError, body: dict[str, Any]) -> dict[str, Any]:
    """The same error as a FHIR R4 OperationOutcome: one issue, details per named field."""
    inner = body.get("error") or {}
    issue: dict[str, Any] = {
        "severity": "error" if error.status < 500 else "fatal",
        "code": _ISSUE_TYPE.get(error.status, "exception"),
        "details": {"text": str(inner.get("message") or error.message)},
        "diagnostics": str(inner.get("code") or error.code),
    }
    fields = [
        str(item.get("path") or item.get("field"))
        for item in inner.get("details") or []
        if isinstance(item, dict) and (item.get("path") or item.get("field"))
    ]
    if fields:
        issue["expression"] = fields
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def error_response(error: CdsError) -> Response:
    body = error.to_json()
    if wants_fhir_json():
        response = jsonify(operation_outcome(error, body))
        response.mimetype = FHIR_JSON
    else:
        response = jsonify(body)
    response.status_code = error.status
    if isinstance(error, Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="cds-services"'
    return response


def handle_cds_error(error: CdsError) -> Response:
    if error.status >= 500:
        log.error("request failed: %s (%s)", error.code, type(error).__name__)
    return error_response(error)


def handle_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    cls = _HTTP_TO_ERROR.get(status)
    if cls is None:
        generic = CdsError()
        generic.status = status
        generic.code = "http-error"
        generic.message = error.name
        return error_response(generic)
    response = error_response(cls())
    if status == 405 and error.get_response().headers.get("Allow"):
        response.headers["Allow"] = error.get_response().headers["Allow"]
    return response


def handle_unexpected(error: Exception) -> Response:
    # The message of an unexpected exception may carry request data: log the type and
    # the frames only, never the message, and answer with the generic 500.
    frames = "".join(traceback.format_tb(error.__traceback__))
    log.error("unexpected %s\n%s", type(error).__name__, frames)
    return error_response(CdsError())


def init_app(app: Flask) -> None:
    app.register_error_handler(CdsError, handle_cds_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
