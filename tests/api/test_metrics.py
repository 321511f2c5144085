"""The Prometheus endpoint counts calls, phases, cards, FHIR failures and errors."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from cds_hooks.services import CdsService, Evaluation, PrefetchData, ServiceRegistry
from tests.api.test_http_errors import request_body
from tests.support.fake_services import fake_registry
from tests.support.service_process import ServiceProcess, free_port, http

PATIENT_ID = "pat-secret-4711"


def _samples(client: FlaskClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    found = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(client: FlaskClient, name: str, **labels: str) -> float:
    return _samples(client).get((name, frozenset(labels.items())), 0.0)


def _no_answer(_request: Any, _data: PrefetchData) -> Evaluation:
    return Evaluation()


def _registry_with_optional_key() -> ServiceRegistry:
    return ServiceRegistry(
        [
            *fake_registry(),
            CdsService(
                id="optional-view",
                hook="patient-view",
                title="Optional",
                description="Needs no prefetch key.",
                prefetch={"observations": "Observation?patient={{context.patientId}}"},
                evaluate=_no_answer,
            ),
        ]
    )


@pytest.fixture
def client(make_app: Any) -> FlaskClient:
    return make_app(CDS_REGISTRY=_registry_with_optional_key()).test_client()


def test_a_call_is_counted_with_its_phases_and_cards(client: FlaskClient) -> None:
    for _ in range(2):
        assert client.post("/cds-services/test-view", json=request_body()).status_code == 200

    assert (
        value(client, "cds_requests_total", endpoint="call", service="test-view", status="200") == 2
    )
    assert (
        value(client, "cds_request_duration_seconds_count", endpoint="call", service="test-view")
        == 2
    )
    for name in ("auth", "parse", "prefetch", "rules", "storage", "cards"):
        assert (
            value(client, "cds_phase_duration_seconds_count", service="test-view", phase=name) == 2
        ), name
    assert value(client, "cds_cards_issued_total", service="test-view", finding="test-finding") == 2
    assert value(client, "cds_http_errors_total", status_class="4xx", status="404") == 0


def test_each_app_counts_from_zero(make_app: Any) -> None:
    first = make_app(CDS_REGISTRY=fake_registry()).test_client()
    first.post("/cds-services/test-view", json=request_body())
    second = make_app(CDS_REGISTRY=fake_registry()).test_client()
    assert (
        value(second, "cds_requests_total", endpoint="call", service="test-view", status="200") == 0
    )


def test_errors_are_counted_by_class(client: FlaskClient) -> None:
    client.post("/cds-services/test-view", data=b"{", content_type="application/json")
    exploding = request_body(context={"patientId": PATIENT_ID, "explode": True})
    assert client.post("/cds-services/test-view", json=exploding).status_code == 500

    assert value(client, "cds_http_errors_total", status_class="4xx", status="400") == 1
    assert value(client, "cds_http_errors_total", status_class="5xx", status="500") == 1
    assert (
        value(
            client,
            "cds_phase_errors_total",
            service="test-view",
            phase="parse",
            code="invalid-request",
        )
        == 1
    )
    assert (
        value(
            client, "cds_phase_errors_total", service="test-view", phase="rules", code="unexpected"
        )
        == 1
    )


def test_unknown_service_ids_share_one_label(client: FlaskClient) -> None:
    for made_up in ("a", "b", "c"):
        assert client.post(f"/cds-services/{made_up}", json=request_body()).status_code == 404
    samples = _samples(client)
    services = {
        dict(labels).get("service") for (name, labels) in samples if name == "cds_requests_total"
    }
    assert services >= {"(unknown)"}
    assert not services & {"a", "b", "c"}
    assert (
        value(client, "cds_requests_total", endpoint="call", service="(unknown)", status="404") == 3
    )


def test_missing_required_prefetch_counts_as_a_prefetch_error(client: FlaskClient) -> None:
    response = client.post("/cds-services/test-view", json=request_body(prefetch={}))
    assert response.status_code == 412
    assert (
        value(
            client,
            "cds_phase_errors_total",
            service="test-view",
            phase="prefetch",
            code="prefetch-unavailable",
        )
        == 1
    )
    assert value(client, "cds_http_errors_total", status_class="4xx", status="412") == 1


def test_failed_optional_key_is_a_fetch_failure(client: FlaskClient) -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": []}
    body = request_body(prefetch={"observations": outcome})
    assert client.post("/cds-services/optional-view", json=body).status_code == 200
    assert (
        value(client, "cds_fhir_fetch_failures_total", service="optional-view", key="observations")
        == 1
    )


def test_metrics_never_carry_patient_ids(client: FlaskClient) -> None:
    body = request_body(context={"patientId": PATIENT_ID, "userId": "Practitioner/99"})
    client.post("/cds-services/test-view", json=body)
    client.post(
        "/cds-services/test-view",
        json=request_body(context={"patientId": PATIENT_ID, "explode": True}),
    )
    text = client.get("/metrics").get_data(as_text=True)
    assert PATIENT_ID not in text
    assert "Practitioner/99" not in text


def test_gunicorn_workers_are_summed(tmp_path: Path) -> None:
    """Under gunicorn each worker counts in its own files; any worker's /metrics sums them."""
    service = ServiceProcess(tmp_path, workers=2, CDS_ALLOW_UNSIGNED="1")
    try:
        url = f"{service.base}/cds-services/mkopper-patient-view/feedback"
        body = {
            "feedback": [
                {"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-11-25T10:15:00Z"}
            ]
        }
        metric_files = tmp_path / f"prometheus-{service.port}"

        def counting_pids() -> set[str]:
            return {f.name.rsplit("_", 1)[-1] for f in metric_files.glob("*.db")}

        # The kernel gives each connection to whichever worker accepts first, so one worker
        # may take a run of calls: send them in parallel batches until both have counted.
        calls = 0
        with ThreadPoolExecutor(max_workers=8) as pool:
            for _ in range(25):
                statuses = list(pool.map(lambda _: http("POST", url, body)[0], range(16)))
                assert statuses == [200] * 16
                calls += 16
                if len(counting_pids()) >= 2:
                    break
        assert len(service.workers()) == 2
        assert len(counting_pids()) >= 2, "one file set per worker"
        # Consecutive scrapes land on either worker; each must see all calls.
        for _ in range(6):
            status, text = http("GET", service.base + "/metrics")
            assert status == 200
            counts = {
                sample.labels["endpoint"]: sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "cds_requests_total" and sample.labels["status"] == "200"
            }
            assert counts["feedback"] == calls
    finally:
        assert service.stop() == 0


def test_urls_without_a_route_share_one_label(client: FlaskClient) -> None:
    for path in ("/nothing-here", "/also/not/here"):
        assert client.get(path).status_code == 404
    assert value(client, "cds_requests_total", endpoint="(none)", service="", status="404") == 2
    assert value(client, "cds_http_errors_total", status_class="4xx", status="404") == 2


def test_an_unreachable_fhir_server_is_counted(make_app: Any) -> None:
    port = free_port()  # nothing listens here: every fetch is refused
    fhir_base = f"http://127.0.0.1:{port}/fhir"
    client = make_app(
        CDS_REGISTRY=_registry_with_optional_key(), CDS_ALLOWED_FHIR_SERVERS=fhir_base
    ).test_client()
    body = request_body(prefetch=None, fhirServer=fhir_base)
    body.pop("prefetch")

    # An optional key that cannot be fetched: the call goes on without it.
    assert client.post("/cds-services/optional-view", json=body).status_code == 200
    assert (
        value(client, "cds_fhir_fetch_failures_total", service="optional-view", key="observations")
        == 1
    )
    # A required key that cannot be fetched ends the call in the prefetch phase.
    assert client.post("/cds-services/test-view", json=body).status_code == 412
    assert (
        value(
            client,
            "cds_phase_errors_total",
            service="test-view",
            phase="prefetch",
            code="prefetch-unavailable",
        )
        == 1
    )


def test_resources_read_leniently_are_counted_and_logged_without_data(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.cds_hooks.test_guideline_facts import MPOX, condition
    from tests.support.fhir import searchset

    broken = condition(MPOX, "confirmed")
    broken["subject"] = "Patient/" + PATIENT_ID  # not a Reference: fails strict R4
    body = {
        "hook": "patient-view",
        "hookInstance": "5b2b0f8e-2f3c-4d5e-8f9a-0b1c2d3e4f50",
        "context": {"userId": "Practitioner/1", "patientId": PATIENT_ID},
        "prefetch": {"conditions": searchset([broken]), "observations": searchset([])},
    }
    client = make_app().test_client()
    with caplog.at_level("INFO", logger="plugin.calls"):
        response = client.post("/cds-services/mkopper-patient-view", json=body)
    assert response.status_code == 200
    assert response.get_json()["cards"], "a confirmed case read leniently still gets its cards"
    assert (
        value(
            client,
            "cds_resources_unusual_total",
            service="mkopper-patient-view",
            how="read_leniently",
        )
        == 1
    )
    line = next(r.getMessage() for r in caplog.records if r.name == "plugin.calls")
    assert '"resources":{"read_leniently":1}' in line
    assert PATIENT_ID not in line
