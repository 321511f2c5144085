"""Security headers on every response: success, every error status, and the preflight."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, Response

from plugin.api import headers
from tests.support.fake_services import fake_registry

REQUEST = {
    "hook": "patient-view",
    "hookInstance": "5b1f3a59-0d1c-4d4e-8a3f-2e8c6f1d9a77",
    "context": {"userId": "Practitioner/1", "patientId": "pat-1"},
    "prefetch": {"conditions": {"resourceType": "Bundle", "type": "searchset"}},
}


@pytest.fixture
def app(make_app: Any) -> Flask:
    application: Flask = make_app(
        CDS_REGISTRY=fake_registry(),
        CDS_MAX_BODY_BYTES="2048",
        CDS_CORS_ORIGINS="https://sandbox.cds-hooks.org",
    )
    return application


def assert_api_headers(response: Response) -> None:
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("get", "/cds-services", {}, 200),
        ("post", "/cds-services/test-view", {"json": REQUEST}, 200),
        ("get", "/healthz", {}, 200),
        ("post", "/cds-services/no-such-service", {"json": REQUEST}, 404),
        ("get", "/cds-services/test-view", {}, 405),
        ("post", "/cds-services/test-view", {"data": b"x", "content_type": "text/plain"}, 415),
        (
            "post",
            "/cds-services/test-view",
            {"data": b"{", "content_type": "application/json"},
            400,
        ),
        (
            "post",
            "/cds-services/test-view",
            {"data": b"[" * 4096, "content_type": "application/json"},
            413,
        ),
        (
            "post",
            "/cds-services/test-view",
            {"json": REQUEST, "environ_overrides": {"REMOTE_ADDR": "10.1.2.3"}},
            401,
        ),
        ("get", "/nothing-here", {}, 404),
    ],
)
def test_every_response_carries_the_security_headers(
    app: Flask, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    response = getattr(app.test_client(), method)(path, **kwargs)
    assert response.status_code == status
    assert_api_headers(response)
    assert "Strict-Transport-Security" not in response.headers  # plain http in tests


def test_cors_preflight_carries_the_security_headers(app: Flask) -> None:
    response = app.test_client().options(
        "/cds-services/test-view",
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
        },
    )
    assert response.status_code < 300
    assert_api_headers(response)


def test_hsts_when_the_public_url_is_https(make_app: Any) -> None:
    app = make_app(CDS_REGISTRY=fake_registry(), CDS_PUBLIC_URL="https://cds.example.org")
    response = app.test_client().get("/healthz")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")


def test_html_pages_may_be_framed_by_the_ehr_and_keep_their_own_policy(app: Flask) -> None:
    @app.get("/page-test")
    def page() -> Response:
        return Response("<p>hi</p>", mimetype="text/html")

    @app.get("/page-own-policy")
    def own_policy() -> Response:
        response = Response("<p>hi</p>", mimetype="text/html")
        response.headers["Content-Security-Policy"] = "default-src 'self'"
        return response

    client = app.test_client()
    framed = client.get("/page-test")
    assert "X-Frame-Options" not in framed.headers
    assert framed.headers["X-Content-Type-Options"] == "nosniff"
    assert "object-src 'none'" in framed.headers["Content-Security-Policy"]
    assert client.get("/page-own-policy").headers["Content-Security-Policy"] == "default-src 'self'"


def test_registering_twice_adds_the_hook_once(app: Flask) -> None:
    before = len(app.after_request_funcs[None])
    headers.init_app(app)
    assert len(app.after_request_funcs[None]) == before
