"""Errors as FHIR OperationOutcome when the client asks for application/fhir+json (CDS Hooks
3.0 ballot, compatible with 2.0.1: plain JSON clients keep the one error shape)."""

from __future__ import annotations

from typing import Any

import pytest

from plugin.version import CDS_HOOKS_VERSION, __version__


def test_a_fhir_json_client_gets_an_operation_outcome_naming_the_field(client: Any) -> None:
    response = client.post(
        "/cds-services/mkopper-patient-view",
        json={"hook": "patient-view", "hookInstance": "x", "context": {}},
        headers={"Accept": "application/fhir+json"},
    )
    assert response.status_code == 400
    assert response.mimetype == "application/fhir+json"
    body = response.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome"
    (issue,) = body["issue"]
    assert issue["severity"] == "error" and issue["code"] == "invalid"
    assert issue["diagnostics"] == "invalid-request"
    assert issue["expression"], issue


@pytest.mark.parametrize("accept", [None, "application/json", "*/*"])
def test_other_clients_keep_the_one_error_shape(client: Any, accept: str | None) -> None:
    headers = {"Accept": accept} if accept else {}
    response = client.get("/cds-services/no-such-service", headers=headers)
    assert response.status_code in (404, 405)
    assert response.mimetype == "application/json"
    assert set(response.get_json()) == {"error"}


def test_a_404_as_operation_outcome(client: Any) -> None:
    response = client.post(
        "/cds-services/no-such-service", json={}, headers={"Accept": "application/fhir+json"}
    )
    assert response.status_code == 404
    assert response.get_json(force=True)["issue"][0]["code"] == "not-found"


def test_every_answer_advertises_the_versions(client: Any) -> None:
    for response in (client.get("/cds-services"), client.get("/no-such-page")):
        assert response.headers["X-CDS-Hooks-Version"] == CDS_HOOKS_VERSION
        assert response.headers["X-Mkopper-CDS-Version"] == __version__
