"""Realistic CDS Hooks requests built from the synthetic patients, for the security tests.

Each request carries a ``fhirAuthorization`` whose token is a canary
(:data:`FHIR_TOKEN`): it must never appear in a log line or a response.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from typing import Any

from cds_hooks.services import CdsService
from tests.support.fhir import collection, searchset
from tests.support.paths import PATIENTS

PATIENTS_DIR = PATIENTS
FHIR_TOKEN = "canary-fhir-token-7c1f0f5e2b9d4a68"
FHIR_SERVER = "https://fhir.not-on-the-allowlist.example/R4"
USER = "Practitioner/security-test"

# Which prefetch key holds which resource type.
PREFETCH_TYPES = {
    "conditions": "Condition",
    "observations": "Observation",
    "aerosolOrders": "ServiceRequest",
}


@cache
def patients() -> dict[str, tuple[dict[str, Any], ...]]:
    """Patient id -> the resources of its transaction Bundle."""
    found: dict[str, tuple[dict[str, Any], ...]] = {}
    for path in sorted(PATIENTS_DIR.glob("mk-*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        resources = tuple(entry["resource"] for entry in bundle.get("entry", []))
        patient = next(r for r in resources if r["resourceType"] == "Patient")
        found[patient["id"]] = resources
    return found


def hook_request(service: CdsService, patient_id: str) -> dict[str, Any]:
    """A complete, valid request to ``service`` about ``patient_id``."""
    resources = list(patients()[patient_id])

    def of_type(name: str) -> list[dict[str, Any]]:
        return [r for r in resources if r["resourceType"] == name]

    encounters = of_type("Encounter")
    context: dict[str, Any] = {"userId": USER, "patientId": patient_id}
    if encounters:
        context["encounterId"] = encounters[0]["id"]
    for key in service.required_context:
        if key == "encounterId":
            context.setdefault(key, f"{patient_id}-enc")
        elif key == "draftOrders":
            context[key] = collection(of_type("ServiceRequest"))
            context["selections"] = [
                f"ServiceRequest/{r['id']}" for r in of_type("ServiceRequest")
            ][:1]
        elif key == "appointments":
            context[key] = collection([])
        elif key == "conditions":
            context[key] = collection(of_type("Condition"))
    prefetch: dict[str, Any] = {}
    for key in service.prefetch:
        if key == "encounter":
            prefetch[key] = encounters[0] if encounters else None
        else:
            prefetch[key] = searchset(of_type(PREFETCH_TYPES.get(key, key)), total=True)
    return {
        "hook": service.hook,
        "hookInstance": "3f1f6c0e-7a1b-4a55-9d0b-5d9c3f2a8e10",
        "fhirServer": FHIR_SERVER,
        "fhirAuthorization": {
            "access_token": FHIR_TOKEN,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/Patient.read user/Condition.read user/Observation.read",
            "subject": "mkopper-cds",
        },
        "context": context,
        "prefetch": prefetch,
    }


def all_requests(services: list[CdsService]) -> Iterator[tuple[CdsService, str, dict[str, Any]]]:
    for service in services:
        for patient_id in patients():
            yield service, patient_id, hook_request(service, patient_id)


def patient_identifiers() -> set[str]:
    """Strings that identify a synthetic patient: ids, national numbers, names."""
    found: set[str] = set()
    for patient_id, resources in patients().items():
        found.add(patient_id)
        for resource in resources:
            if resource["resourceType"] != "Patient":
                continue
            found.update(i["value"] for i in resource.get("identifier", []))
            for name in resource.get("name", []):
                found.update(name.get("given", []))
                if name.get("family"):
                    found.add(name["family"])
    return found
