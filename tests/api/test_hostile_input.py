"""Hostile input never gets a 5xx, a stack trace or a crash.

Property-based: more than 10,000 generated malformed requests (mutated real
requests, arbitrary JSON, arbitrary bytes, invalid UTF-8, odd headers and
paths) go through the Flask test client against the real services; each must
be answered below 500 in the one error shape. Then the explicit cases: the
body size limit, deep nesting, huge prefetch Bundles, lone surrogates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_hooks.services import CdsService
from plugin import create_app
from plugin.api.views import MAX_BODY_CONTAINERS
from tests.support.fhir import searchset
from tests.support.security_requests import all_requests, hook_request, patients

# Examples per property; together well over 10,000 requests.
MUTATED_REQUESTS = 4500
ARBITRARY_JSON = 1500
ARBITRARY_BYTES = 1500
BROKEN_JSON_TEXT = 1000
FEEDBACK = 1000
HEADERS_AND_PATHS = 1000


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    data_dir: Path = tmp_path_factory.mktemp("hostile")
    application = create_app({"CDS_DATA_DIR": str(data_dir), "CDS_ALLOW_UNSIGNED": "1"})
    yield application
    application.extensions["cds_store"].engine.dispose()


@pytest.fixture(scope="module")
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="module")
def services(app: Flask) -> list[CdsService]:
    return list(app.extensions["cds_registry"])


@pytest.fixture(scope="module")
def valid_requests(services: list[CdsService]) -> list[tuple[str, dict[str, Any]]]:
    return [(service.id, body) for service, _, body in all_requests(services)]


def assert_handled(response: Any) -> None:
    """Below 500; an error is the one JSON shape without a stack trace."""
    text = response.get_data(as_text=True)
    assert response.status_code < 500, text[:500]
    assert "Traceback" not in text
    if response.status_code >= 400:
        error = response.get_json()["error"]
        assert error["status"] == response.status_code
        assert isinstance(error["code"], str) and isinstance(error["message"], str)


# --- strategies ----------------------------------------------------------------------------

# Text includes lone surrogates: valid in JSON text as "\ud800", not encodable as UTF-8.
any_text = st.text(st.characters(exclude_categories=()), max_size=30)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | any_text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=15,
)


@st.composite
def mutated(draw: st.DrawFn, base: Any) -> Any:
    """``base`` with one value somewhere inside replaced, removed or added to."""
    if not isinstance(base, dict | list) or not base or draw(st.integers(0, 4)) == 0:
        return draw(json_values)
    copy: Any = dict(base) if isinstance(base, dict) else list(base)
    keys = list(copy) if isinstance(copy, dict) else list(range(len(copy)))
    key = draw(st.sampled_from(keys))
    action = draw(st.sampled_from(["descend", "descend", "descend", "delete", "add"]))
    if action == "delete":
        del copy[key]
    elif action == "add" and isinstance(copy, dict):
        copy[draw(any_text)] = draw(json_values)
    elif action == "add":
        copy.append(draw(json_values))
    else:
        copy[key] = draw(mutated(copy[key]))
    return copy


def post_json(client: FlaskClient, service_id: str, body: Any, ascii_only: bool) -> Any:
    # ASCII JSON escapes a surrogate as "\ud800"; the raw form gives invalid UTF-8 bytes.
    data = json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    return client.post(f"/cds-services/{service_id}", data=data, content_type="application/json")


# --- properties -----------------------------------------------------------------------------


@fuzz(MUTATED_REQUESTS)
@given(data=st.data())
def test_mutated_real_requests_never_5xx(
    client: FlaskClient, data: st.DataObject, valid_requests: list[tuple[str, dict[str, Any]]]
) -> None:
    service_id, body = data.draw(st.sampled_from(valid_requests))
    for _ in range(data.draw(st.integers(1, 3))):
        body = data.draw(mutated(body))
    assert_handled(post_json(client, service_id, body, data.draw(st.booleans())))


@fuzz(ARBITRARY_JSON)
@given(body=json_values, data=st.data())
def test_arbitrary_json_bodies_never_5xx(
    client: FlaskClient, body: Any, data: st.DataObject, services: list[CdsService]
) -> None:
    service = data.draw(st.sampled_from(services))
    assert_handled(post_json(client, service.id, body, data.draw(st.booleans())))


@fuzz(ARBITRARY_BYTES)
@given(raw=st.binary(max_size=400), data=st.data())
def test_arbitrary_bytes_never_5xx(
    client: FlaskClient, raw: bytes, data: st.DataObject, services: list[CdsService]
) -> None:
    service = data.draw(st.sampled_from(services))
    content_type = data.draw(
        st.sampled_from(
            [
                "application/json",
                "application/json; charset=utf-8",
                "application/json; charset=utf-16",
                "application/json; charset=nonsense",
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
            ]
        )
    )
    response = client.post(f"/cds-services/{service.id}", data=raw, content_type=content_type)
    assert_handled(response)


@fuzz(BROKEN_JSON_TEXT)
@given(data=st.data())
def test_corrupted_json_text_and_invalid_utf8_never_5xx(
    client: FlaskClient, data: st.DataObject, valid_requests: list[tuple[str, dict[str, Any]]]
) -> None:
    service_id, body = data.draw(st.sampled_from(valid_requests))
    raw = bytearray(json.dumps(body, ensure_ascii=False).encode("utf-8"))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw)))
        how = data.draw(st.sampled_from(["insert", "replace", "truncate"]))
        junk = data.draw(
            st.sampled_from(
                [
                    b"\xff",
                    b"\xc0\xaf",
                    b"\xed\xa0\x80",
                    b"\xe2\x82",
                    b"\x00",
                    b"\\ud800",
                    b'"',
                    b"{",
                    b"]",
                    b"NaN",
                    b"1e999999",
                    b"\\",
                    b"\xf4\x90\x80\x80",
                ]
            )
            | st.binary(min_size=1, max_size=4)
        )
        if how == "insert":
            raw[at:at] = junk
        elif how == "replace":
            raw[at : at + len(junk)] = junk
        else:
            del raw[at:]
    response = client.post(
        f"/cds-services/{service_id}", data=bytes(raw), content_type="application/json"
    )
    assert_handled(response)


FEEDBACK_BASE = {
    "feedback": [
        {
            "card": "9b1f0c1e-2d7a-4f3e-8a55-0c2b7f1d6e99",
            "outcome": "overridden",
            "overrideReason": {
                "reason": {"code": "x", "system": "http://example.org", "display": "x"},
                "userComment": "kommentar",
            },
            "outcomeTimestamp": "2026-01-01T00:00:00Z",
        }
    ]
}


@fuzz(FEEDBACK)
@given(data=st.data())
def test_mutated_feedback_never_5xx(
    client: FlaskClient, data: st.DataObject, services: list[CdsService]
) -> None:
    service = data.draw(st.sampled_from(services))
    body = data.draw(mutated(FEEDBACK_BASE) | json_values)
    response = client.post(
        f"/cds-services/{service.id}/feedback",
        data=json.dumps(body).encode(),
        content_type="application/json",
    )
    assert_handled(response)


@fuzz(HEADERS_AND_PATHS)
@given(data=st.data())
def test_odd_methods_paths_and_headers_never_5xx(
    client: FlaskClient, data: st.DataObject, valid_requests: list[tuple[str, dict[str, Any]]]
) -> None:
    service_id, body = data.draw(st.sampled_from(valid_requests))
    segment = data.draw(st.sampled_from([service_id]) | st.text(min_size=1, max_size=40))
    suffix = data.draw(st.sampled_from(["", "/feedback", "/", "/../..", "/x/y"]))
    method = data.draw(
        st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
    )
    headers = {}
    header_value = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
    if data.draw(st.booleans()):
        headers["Authorization"] = data.draw(header_value)
    if data.draw(st.booleans()):
        headers["Origin"] = data.draw(header_value)
    if data.draw(st.booleans()):
        headers["Accept"] = data.draw(header_value)
    response = client.open(
        f"/cds-services/{quote(segment, safe='')}{suffix}",
        method=method,
        data=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )
    assert response.status_code < 500


# --- explicit cases -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def a_request(services: list[CdsService]) -> tuple[str, dict[str, Any]]:
    service = services[0]
    return service.id, hook_request(service, "mk-confirmed-inpatient")


def padded(body: dict[str, Any], size: int) -> bytes:
    """``body`` as JSON, padded with trailing whitespace to exactly ``size`` bytes."""
    raw = json.dumps(body).encode()
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


def test_body_at_the_default_limit_is_read_and_one_byte_more_is_413(
    client: FlaskClient, app: Flask, a_request: tuple[str, dict[str, Any]]
) -> None:
    limit = int(app.config["CDS_MAX_BODY_BYTES"])
    assert limit == 5 * 1024 * 1024
    service_id, body = a_request
    url = f"/cds-services/{service_id}"
    at_limit = client.post(url, data=padded(body, limit), content_type="application/json")
    assert at_limit.status_code == 200
    over = client.post(url, data=padded(body, limit + 1), content_type="application/json")
    assert over.status_code == 413
    assert over.get_json()["error"]["code"] == "payload-too-large"


def test_body_limit_holds_without_a_content_length(
    client: FlaskClient, a_request: tuple[str, dict[str, Any]]
) -> None:
    # A chunked upload has no Content-Length; under gunicorn the server terminates the
    # stream and the limit must apply to what is read, not be a silent truncation.
    service_id, body = a_request
    chunked = {"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"}
    url = f"/cds-services/{service_id}"
    over = client.post(
        url,
        data=padded(body, 5 * 1024 * 1024 + 1),
        content_type="application/json",
        environ_overrides=chunked,
    )
    assert over.status_code == 413
    assert_handled(over)
    within = client.post(
        url,
        data=padded(body, 5 * 1024 * 1024),
        content_type="application/json",
        environ_overrides=chunked,
    )
    assert within.status_code == 200


def test_body_limit_follows_the_setting(
    make_app: Any, a_request: tuple[str, dict[str, Any]]
) -> None:
    app = make_app(CDS_MAX_BODY_BYTES="1024")
    service_id, body = a_request
    response = app.test_client().post(
        f"/cds-services/{service_id}", data=padded(body, 20_000), content_type="application/json"
    )
    assert response.status_code == 413


def test_a_body_of_more_containers_than_are_read_is_413_before_parsing(
    client: FlaskClient, a_request: tuple[str, dict[str, Any]]
) -> None:
    # 250,001 empty objects: 750 kB, well within the byte limit, 15 times the large record's
    # objects and arrays.
    service_id, body = a_request
    url = f"/cds-services/{service_id}"
    flood = dict(body, context=dict(body["context"], flood=[{}] * (MAX_BODY_CONTAINERS + 1)))
    raw = json.dumps(flood, separators=(",", ":")).encode()
    assert len(raw) < 5 * 1024 * 1024 // 4
    over = client.post(url, data=raw, content_type="application/json")
    assert over.status_code == 413
    assert over.get_json()["error"]["code"] == "payload-too-large"
    assert "250,000 JSON objects and arrays" in over.get_json()["error"]["message"]
    # Well within the cap (the request's own objects and arrays besides): read as before.
    within = dict(body, context=dict(body["context"], flood=[{}] * (MAX_BODY_CONTAINERS - 1000)))
    answer = client.post(url, data=json.dumps(within).encode(), content_type="application/json")
    assert answer.status_code == 200


@pytest.mark.parametrize("depth", [100, 900, 1000, 5000, 100_000, 1_000_000])
@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_deeply_nested_json_is_400(
    client: FlaskClient, a_request: tuple[str, dict[str, Any]], depth: int, opener: str
) -> None:
    service_id, _ = a_request
    closer = "]" if opener == "[" else "}"
    raw = (opener * depth + "1" + closer * depth).encode()
    if len(raw) > 5 * 1024 * 1024:
        raw = (opener * depth).encode()
    response = client.post(f"/cds-services/{service_id}", data=raw, content_type="application/json")
    assert 400 <= response.status_code < 500
    assert_handled(response)


@pytest.mark.parametrize("depth", [50, 300, 490, 2000])
def test_deep_nesting_inside_a_valid_request(
    client: FlaskClient, a_request: tuple[str, dict[str, Any]], depth: int
) -> None:
    service_id, body = a_request
    body = json.loads(json.dumps(body))
    body["context"]["deep"] = "DEEP"
    body["prefetch"]["conditions"]["entry"][0]["resource"]["note"] = "DEEP"
    nested = '{"extension":[' * depth + '"x"' + "]}" * depth
    raw = json.dumps(body).replace('"DEEP"', nested).encode()
    response = client.post(f"/cds-services/{service_id}", data=raw, content_type="application/json")
    assert_handled(response)


def test_huge_prefetch_bundle_is_answered(client: FlaskClient, services: list[CdsService]) -> None:
    service = services[0]
    body = hook_request(service, "mk-confirmed-inpatient")
    conditions = [
        r for r in patients()["mk-confirmed-inpatient"] if r["resourceType"] == "Condition"
    ]
    many = [dict(conditions[0], id=f"c-{i}") for i in range(5000)]
    body["prefetch"]["conditions"] = searchset(many, total=True)
    raw = json.dumps(body).encode()
    assert 2 * 1024 * 1024 < len(raw) < 5 * 1024 * 1024
    response = client.post(f"/cds-services/{service.id}", data=raw, content_type="application/json")
    assert response.status_code == 200
    assert len(response.get_json()["cards"]) <= 3


# A lone surrogate ("\ud800" in the JSON text) is valid JSON but not encodable text: the
# ids are hashed and put into URLs, so the body parser refuses it with a 400.
@pytest.mark.parametrize("field", ["hookInstance", "hook", "userId", "patientId", "encounterId"])
def test_lone_surrogates_in_strings(
    client: FlaskClient, a_request: tuple[str, dict[str, Any]], field: str
) -> None:
    service_id, body = a_request
    body = json.loads(json.dumps(body))
    if field in body:
        body[field] = "a\ud800b"
    else:
        body["context"][field] = "a\udfffb"
    raw = json.dumps(body).encode()  # ensure_ascii: the JSON text carries "\ud800"
    response = client.post(f"/cds-services/{service_id}", data=raw, content_type="application/json")
    assert response.status_code == 400
    assert_handled(response)


# The same surrogate as raw bytes (b"\xed\xa0\x80", as CESU-8 writes it) is not UTF-8 at all;
# json.loads would take it with "surrogatepass", so the parser decodes strictly first.
@pytest.mark.parametrize("field", ["hookInstance", "userId", "patientId", "encounterId"])
def test_encoded_surrogates_are_not_utf8(
    client: FlaskClient, a_request: tuple[str, dict[str, Any]], field: str
) -> None:
    service_id, body = a_request
    body = json.loads(json.dumps(body))
    if field in body:
        body[field] = "a\ud800b"
    else:
        body["context"][field] = "a\ud800b"
    raw = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    assert b"\xed\xa0\x80" in raw
    response = client.post(f"/cds-services/{service_id}", data=raw, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"]["message"] == "The body is not valid JSON."


@pytest.mark.parametrize(
    "hook", ["", "patient-view ", "PATIENT-VIEW", "order-sign", "no-such-hook", "a" * 10_000]
)
def test_unknown_or_wrong_hooks_are_400(
    client: FlaskClient, a_request: tuple[str, dict[str, Any]], hook: str
) -> None:
    service_id, body = a_request
    body = dict(body, hook=hook)
    response = client.post(f"/cds-services/{service_id}", json=body)
    assert response.status_code == 400
    assert_handled(response)


WRONG_TYPES = [None, 0, -1, 1.5, True, "", "x", [], [1], {}, {"a": 1}]


@pytest.mark.parametrize("value", WRONG_TYPES)
@pytest.mark.parametrize(
    "path",
    [
        ("hook",),
        ("hookInstance",),
        ("fhirServer",),
        ("fhirAuthorization",),
        ("fhirAuthorization", "access_token"),
        ("fhirAuthorization", "expires_in"),
        ("context",),
        ("context", "patientId"),
        ("context", "encounterId"),
        ("context", "userId"),
        ("prefetch",),
        ("prefetch", "conditions"),
        ("prefetch", "observations"),
        ("prefetch", "encounter"),
        ("prefetch", "conditions", "entry"),
    ],
)
def test_wrong_types_everywhere(
    client: FlaskClient, a_request: tuple[str, dict[str, Any]], path: tuple[str, ...], value: Any
) -> None:
    service_id, body = a_request
    body = json.loads(json.dumps(body))
    target = body
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    assert_handled(client.post(f"/cds-services/{service_id}", json=body))


def test_every_valid_request_still_passes(
    client: FlaskClient, valid_requests: list[tuple[str, dict[str, Any]]]
) -> None:
    # The fuzzing above starts from these; they must be answered 200 or it fuzzes nothing.
    for service_id, body in valid_requests:
        response = client.post(f"/cds-services/{service_id}", json=body)
        assert response.status_code == 200, (service_id, response.get_json())
