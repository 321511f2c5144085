"""FHIR boundary: the one module that names the FHIR release and talks to FHIR servers.

R4 data is validated with fhir.resources' R4B models (R4B is wire-compatible
with R4 for the resources this service reads). Everything else in
``cds_hooks`` works on raw dicts filtered by code first, and asks this module
to validate only the resources that matter.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from pydantic import ValidationError

FHIR_RELEASE = "R4"
FHIR_VERSION = "4.0.1"


class InvalidResource(ValueError):
    """A FHIR resource did not validate; carries the resource type and field paths only."""


def parse_resource(data: dict[str, Any], resource_type: str | None = None) -> FHIRAbstractModel:
    """Validate one raw resource as its ``resourceType`` (or the given type)."""
    name = resource_type or data.get("resourceType")
    if not isinstance(name, str):
        raise InvalidResource("resource has no resourceType")
    try:
        model = get_fhir_model_class(name)
    except ValueError as exc:
        raise InvalidResource(f"unknown resourceType {name!r}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        paths = sorted({".".join(str(p) for p in err["loc"]) for err in exc.errors()})
        raise InvalidResource(f"{name} is not valid FHIR at: {', '.join(paths)[:300]}") from None
