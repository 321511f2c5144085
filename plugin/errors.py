"""The one error handler: every error leaves as the same JSON shape, never a stack trace."""

from __future__ import annotations

import logging
import traceback

from flask import Flask, Response, jsonify
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


def error_response(error: CdsError) -> Response:
    response = jsonify(error.to_json())
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
