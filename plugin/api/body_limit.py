"""The request body limit (``CDS_MAX_BODY_BYTES``) for bodies without a Content-Length too.

Werkzeug answers 413 when a declared Content-Length is over the limit. A
chunked body has none; under a server that terminates the input stream
(gunicorn sets ``wsgi.input_terminated``) Werkzeug then reads up to the limit
and silently drops the rest, so an oversized body would be parsed truncated
instead of refused. Here such a body is read once, up to one byte past the
limit: over it is a 413, within it the body is handed on with its length.
"""

from __future__ import annotations

import io

from flask import Flask

from cds_hooks.errors import PayloadTooLarge
from plugin.context import this_app, this_request

CHUNK = 64 * 1024


def enforce_body_limit() -> None:
    request = this_request()
    environ = request.environ
    limit = this_app().config.get("MAX_CONTENT_LENGTH")
    if limit is None or "wsgi.input_terminated" not in environ:
        return  # without a terminated stream Werkzeug reads only what Content-Length says
    declared = request.content_length
    if declared is not None:
        # The server stops the stream at the declared length; Werkzeug refuses one over
        # the limit. Only a body without a length needs reading here.
        if declared > limit:
            raise PayloadTooLarge()
        return
    stream = environ["wsgi.input"]
    buffer = io.BytesIO()
    while buffer.tell() <= limit:
        chunk = stream.read(min(CHUNK, limit + 1 - buffer.tell()))
        if not chunk:
            break
        buffer.write(chunk)
    if buffer.tell() > limit:
        raise PayloadTooLarge()
    environ["CONTENT_LENGTH"] = str(buffer.tell())
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    buffer.seek(0)
    environ["wsgi.input"] = buffer


def init_app(app: Flask) -> None:
    """Register the check once (calling this twice is harmless)."""
    if app.extensions.get("cds_body_limit"):
        return
    app.extensions["cds_body_limit"] = True
    app.before_request(enforce_body_limit)
