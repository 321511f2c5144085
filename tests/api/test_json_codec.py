"""orjson on the hot path gives the standard library's answers (plugin/api/json_codec.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import uuid
from typing import Any

import pytest
from flask import Flask, jsonify
from flask.json.provider import DefaultJSONProvider
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin.api.json_codec import JSONProvider, loads_strict


def stdlib(raw: bytes) -> tuple[str, Any]:
    try:
        return "ok", repr(json.loads(raw.decode("utf-8")))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return "error", type(exc).__name__


def ours(raw: bytes) -> tuple[str, Any]:
    try:
        return "ok", repr(loads_strict(raw))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return "error", type(exc).__name__


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": 1, "b": [1.5, -0.0, true, null, "\\u00e6\\u00f8\\u00e5"]}',
        '{"tekst": "påvist"}'.encode(),
        b'"\\ud800"',  # a lone surrogate escape: the standard library reads it
        b'"\\ud83d\\ude00"',
        b'"\xed\xa0\x80"',  # an encoded surrogate: not UTF-8
        b"\xff",
        b"\xef\xbb\xbf{}",  # a byte order mark
        b"NaN",
        b"[Infinity, -Infinity]",
        b"[1e400]",
        b"[9223372036854775807, 9223372036854775808, -9223372036854775809]",
        b"[18446744073709551616, 123456789012345678901234567890]",
        b'{"a": 1, "a": 2}',
        b" [1] \n",
        b"[1,]",
        b"{'a': 1}",
        b"",
        b"[" * 2000 + b"]" * 2000,  # orjson refuses past 1024 levels
        b'"tab\there"',
        b'{"a": 1}\x00',
    ],
)
def test_same_result_or_same_error(raw: bytes) -> None:
    assert ours(raw) == stdlib(raw)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(st.characters(exclude_categories=()), max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None, database=None)
@given(value=json_values, ascii_only=st.booleans())
def test_same_result_on_arbitrary_json(value: Any, ascii_only: bool) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    assert ours(raw) == stdlib(raw)


@dataclasses.dataclass
class Point:
    x: int
    when: dt.date


def answers(provider: type[DefaultJSONProvider], value: Any) -> Any:
    app = Flask(__name__)
    app.json = provider(app)
    with app.app_context():
        response = jsonify(value)
        return response.mimetype, json.loads(response.get_data())


@pytest.mark.parametrize(
    "value",
    [
        {"cards": [], "b": 1, "a": 2},  # keys in the order given
        {"summary": "Mistenkt m-kopper: isoler pasienten", "n": [1, 2.5, None, True]},
        {"when": dt.datetime(2026, 12, 3, 10, 0, tzinfo=dt.UTC), "day": dt.date(2026, 12, 3)},
        {"id": uuid.UUID(int=7), "amount": decimal.Decimal("1.10"), "point": Point(1, dt.date.min)},
        {1: "a non-string key"},
        {"big": 2**70},
        {"text": "a\ud800b"},
    ],
)
def test_jsonify_answers_the_same_json(value: Any) -> None:
    assert answers(JSONProvider, value) == answers(DefaultJSONProvider, value)


def test_jsonify_is_compact_and_utf8() -> None:
    app = Flask(__name__)
    app.json = JSONProvider(app)
    with app.app_context():
        body = jsonify({"a": "påvist", "b": [1]}).get_data()
    assert body == '{"a":"påvist","b":[1]}\n'.encode()
