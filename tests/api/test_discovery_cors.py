"""Discovery and CORS for browser-based CDS clients."""

from __future__ import annotations

from typing import Any

from tests.support.fake_services import fake_registry


def test_discovery_lists_services_without_nulls(make_app: Any) -> None:
    client = make_app(CDS_REGISTRY=fake_registry()).test_client()
    body = client.get("/cds-services").get_json()
    assert body == {
        "services": [
            {
                "hook": "patient-view",
                "title": "Test",
                "description": "Counts conditions.",
                "id": "test-view",
                "prefetch": {"conditions": "Condition?patient={{context.patientId}}"},
            }
        ]
    }


def test_preflight_from_allowed_origin(make_app: Any) -> None:
    client = make_app(
        CDS_REGISTRY=fake_registry(), CDS_CORS_ORIGINS="https://sandbox.cds-hooks.org"
    ).test_client()
    response = client.options(
        "/cds-services/test-view",
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://sandbox.cds-hooks.org"
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_preflight_from_other_origin_gets_no_cors_headers(make_app: Any) -> None:
    client = make_app(
        CDS_REGISTRY=fake_registry(), CDS_CORS_ORIGINS="https://sandbox.cds-hooks.org"
    ).test_client()
    response = client.options(
        "/cds-services/test-view",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "Access-Control-Allow-Origin" not in response.headers


def test_health_and_readiness(make_app: Any) -> None:
    client = make_app(CDS_REGISTRY=fake_registry()).test_client()
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ready", "services": 1}


def test_readiness_fails_when_database_is_gone(make_app: Any) -> None:
    app = make_app(CDS_REGISTRY=fake_registry())
    import sqlalchemy as sa

    with app.extensions["cds_store"].engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE feedback"))
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "storage-unavailable"
