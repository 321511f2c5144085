"""JSON on the hot path with orjson, falling back to the standard library where they differ.

orjson parses and writes JSON several times faster than the standard library, but it does not
read exactly the same documents: it refuses what the standard library takes (``NaN``, numbers
beyond a float's range, lone surrogate escapes, nesting past 1024 levels) and reads integers
beyond 64 bits as floats. So a body is parsed by orjson only when it can give the standard
library's answer, and by the standard library otherwise, which then decides as it always did
(the error messages and the strict UTF-8 rule in ``views.parse_body`` stay as they were).

Responses: :class:`JSONProvider` (the app's ``app.json``) writes ``jsonify`` answers with
orjson, in the same compact form and key order, and leaves everything orjson cannot write the
same way (non-string keys, integers beyond 64 bits, text with lone surrogates, the indented
debug form) to Flask's own provider. Two differences in the bytes, none in the JSON read back:
non-ASCII text is written as UTF-8 rather than as ``\\u`` escapes, and a float NaN or infinity
(which the standard library writes as ``NaN``, not JSON at all; no answer of the service holds
one) as ``null``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from flask.json.provider import DefaultJSONProvider
from werkzeug.sansio.response import Response

# Nineteen digits in a row: possibly an integer beyond 64 bits, which orjson reads as a float.
# Found by mapping every digit to "1" and every other byte to "0" (two passes in C, several
# times faster than a regular expression).
_DIGITS = bytes(0x31 if 0x30 <= byte <= 0x39 else 0x30 for byte in range(256))
_LONG_NUMBER = b"1" * 19


# JSON may escape a lone UTF-16 surrogate ("\\ud800"): valid JSON, but not text that can be
# encoded again (ids are hashed and put into URLs).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def may_escape_surrogate(raw: bytes) -> bool:
    """Could ``raw`` escape a lone surrogate? A plain search for the escape's first bytes
    first: most bodies have no escape at all."""
    return b"\\u" in raw and _SURROGATE_ESCAPE.search(raw) is not None


def loads_strict(raw: bytes) -> Any:
    """``json.loads(raw.decode("utf-8"))``, the same result or the same exception, faster.

    Raises ``UnicodeDecodeError``, ``ValueError`` or ``RecursionError`` as the standard
    library does (orjson's own errors are never raised: the standard library is asked again).
    """
    if _LONG_NUMBER not in raw.translate(_DIGITS):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # the standard library decides, with its own verdict
    return json.loads(raw.decode("utf-8"))


_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


class JSONProvider(DefaultJSONProvider):
    """Flask's provider, with ``jsonify`` answers written by orjson (see the module)."""

    sort_keys = False

    def response(self, *args: Any, **kwargs: Any) -> Response:
        if (self.compact is None and self._app.debug) or self.compact is False:
            return super().response(*args, **kwargs)  # the indented form
        obj = self._prepare_response_obj(args, kwargs)
        options = _OPTIONS | (orjson.OPT_SORT_KEYS if self.sort_keys else 0)
        try:
            # Dates and dataclasses go to Flask's own ``default`` (HTTP dates, as Flask writes).
            body = orjson.dumps(obj, default=self.default, option=options)
        except (TypeError, orjson.JSONEncodeError):
            return super().response(*args, **kwargs)
        response_class: Any = self._app.response_class
        response: Response = response_class(body + b"\n", mimetype=self.mimetype)
        return response
