"""The count of JSON objects and arrays taken before a body is parsed (``json_containers``)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from cds_hooks.fhir import json_containers


def test_counts_each_object_and_array_of_a_body() -> None:
    body = json.dumps({"a": [1, {"b": []}], "c": {}}).encode()
    assert json_containers(body) == 5
    assert json_containers(b"") == 0
    assert json_containers(b'"no container"') == 0


def test_a_brace_inside_a_text_counts_too() -> None:
    # An upper bound: the count is taken on the bytes, before anything is parsed.
    assert json_containers(b'{"text": "{[ ]}"}') == 3


def test_the_large_record_as_the_benchmark_sends_it() -> None:
    # Real shapes: many small objects; the count is the same as two byte counts give.
    entries = [
        {"resource": {"resourceType": "Condition", "code": {"coding": [{"code": str(i)}]}}}
        for i in range(500)
    ]
    body = json.dumps({"prefetch": {"conditions": {"entry": entries}}}).encode()
    assert json_containers(body) == body.count(b"{") + body.count(b"[") == 4 + 500 * 5


@given(st.binary(max_size=2000))
def test_any_bytes_count_as_their_braces_and_brackets(raw: bytes) -> None:
    assert json_containers(raw) == raw.count(b"{") + raw.count(b"[")
