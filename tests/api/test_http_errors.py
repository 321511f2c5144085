"""Every error path answers with the one JSON error shape and never a stack trace."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.support.fake_services import fake_registry

BUNDLE: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "entry": []}


def request_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/1", "patientId": "pat-1"},
        "prefetch": {"conditions": BUNDLE},
    }
    body.update(changes)
    return body


@pytest.fixture
def client(make_app: Any) -> FlaskClient:
    return make_app(CDS_REGISTRY=fake_registry()).test_client()


def assert_error_shape(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["status"] == status
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in response.get_data(as_text=True)
    return dict(error)


def test_ok_call_returns_cards(client: FlaskClient) -> None:
    response = client.post("/cds-services/test-view", json=request_body())
    assert response.status_code == 200
    assert response.get_json()["cards"][0]["summary"] == "0 conditions"


def test_not_json_is_400(client: FlaskClient) -> None:
    response = client.post(
        "/cds-services/test-view", data=b"{not json", content_type="application/json"
    )
    assert_error_shape(response, 400, "invalid-request")


def test_invalid_utf8_is_400(client: FlaskClient) -> None:
    response = client.post(
        "/cds-services/test-view", data=b'{"hook": "\xff\xfe"}', content_type="application/json"
    )
    assert_error_shape(response, 400, "invalid-request")


def test_json_array_is_400(client: FlaskClient) -> None:
    response = client.post("/cds-services/test-view", json=[1, 2])
    assert_error_shape(response, 400, "invalid-request")


def test_validation_error_names_path_not_value(client: FlaskClient) -> None:
    body = request_body(hookInstance=12345678, fhirServer="not a url secret-value")
    del body["context"]
    response = client.post("/cds-services/test-view", json=body)
    error = assert_error_shape(response, 400, "invalid-request")
    paths = {d["path"] for d in error["details"]}
    assert {"hookInstance", "context", "fhirServer"} <= paths
    text = response.get_data(as_text=True)
    assert "secret-value" not in text and "12345678" not in text


def test_hook_mismatch_is_400(client: FlaskClient) -> None:
    response = client.post("/cds-services/test-view", json=request_body(hook="order-sign"))
    error = assert_error_shape(response, 400, "invalid-request")
    assert error["details"] == [{"path": "hook", "problem": "must be 'patient-view'"}]


def test_missing_context_key_is_400(client: FlaskClient) -> None:
    response = client.post(
        "/cds-services/test-view", json=request_body(context={"userId": "Practitioner/1"})
    )
    error = assert_error_shape(response, 400, "invalid-request")
    assert error["details"][0]["path"] == "context.patientId"


def test_unknown_service_is_404(client: FlaskClient) -> None:
    response = client.post("/cds-services/no-such-service", json=request_body())
    assert_error_shape(response, 404, "unknown-service")


def test_unknown_url_is_404(client: FlaskClient) -> None:
    assert_error_shape(client.get("/nowhere"), 404, "not-found")


def test_wrong_method_is_405(client: FlaskClient) -> None:
    response = client.get("/cds-services/test-view")
    assert_error_shape(response, 405, "method-not-allowed")
    assert "POST" in response.headers["Allow"]


def test_body_too_large_is_413(make_app: Any) -> None:
    client = make_app(CDS_REGISTRY=fake_registry(), CDS_MAX_BODY_BYTES="1000").test_client()
    body = request_body(context={"patientId": "p", "pad": "x" * 2000})
    response = client.post(
        "/cds-services/test-view", data=json.dumps(body), content_type="application/json"
    )
    assert_error_shape(response, 413, "payload-too-large")


def test_wrong_content_type_is_415(client: FlaskClient) -> None:
    response = client.post(
        "/cds-services/test-view", data=json.dumps(request_body()), content_type="text/plain"
    )
    assert_error_shape(response, 415, "unsupported-media-type")


def test_missing_required_prefetch_is_412(client: FlaskClient) -> None:
    body = request_body()
    body["prefetch"] = {"conditions": {"resourceType": "OperationOutcome", "issue": []}}
    response = client.post("/cds-services/test-view", json=body)
    error = assert_error_shape(response, 412, "prefetch-unavailable")
    assert "conditions" in error["message"] or any(
        "conditions" in str(d) for d in error.get("details", [])
    )


def test_unexpected_failure_is_generic_500(client: FlaskClient, caplog: Any) -> None:
    body = request_body(context={"patientId": "pat-12345", "explode": True})
    response = client.post("/cds-services/test-view", json=body)
    error = assert_error_shape(response, 500, "internal-error")
    assert "secret" not in json.dumps(error)
    assert "pat-12345" not in caplog.text


def test_unsigned_call_from_remote_address_is_401(client: FlaskClient) -> None:
    response = client.post(
        "/cds-services/test-view", json=request_body(), environ_base={"REMOTE_ADDR": "10.1.2.3"}
    )
    assert_error_shape(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("value", [5, 1.5, True, ["pat-1"], {"id": "pat-1"}])
def test_context_id_of_wrong_type_is_400(client: FlaskClient, value: Any) -> None:
    response = client.post(
        "/cds-services/test-view", json=request_body(context={"patientId": value})
    )
    error = assert_error_shape(response, 400, "invalid-request")
    assert error["details"] == [{"path": "context.patientId", "problem": "must be a string"}]


def test_no_cookie_session_is_opened_or_set(client: FlaskClient) -> None:
    # No state lives in Flask's cookie session: a call gets the null session and no cookie,
    # even when the caller sends one.
    from flask import session
    from flask.sessions import NullSession

    client.set_cookie("session", "eyJ4IjoxfQ.forged.cookie")
    with client:
        response = client.post("/cds-services/test-view", json=request_body())
        assert isinstance(session, NullSession)
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers
