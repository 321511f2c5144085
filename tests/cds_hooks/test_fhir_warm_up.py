"""The warm-up resources are valid R4 and cover every type the rules validate."""

from __future__ import annotations

from cds_hooks import fhir


def test_warm_up_resources_are_valid_and_cover_the_rules_types() -> None:
    fhir.warm_up()  # raises InvalidResource if one of them is not valid
    types = {resource["resourceType"] for resource in fhir._WARM_UP}
    assert {
        "Condition",
        "Encounter",
        "Observation",
        "ServiceRequest",
        "Procedure",
        "Communication",
    } <= types
