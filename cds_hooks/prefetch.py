"""Prefetch resolution: turn the request's prefetch (and later, fetches) into PrefetchData.

For each template key a service declares:
- present: a Bundle gives its entries' resources, a single resource gives itself;
- ``null``: known to be empty;
- an OperationOutcome: that key failed;
- absent: fetched from ``fhirServer`` (see :func:`resolve`).
"""

from __future__ import annotations

from typing import Any

from cds_hooks.errors import DataUnavailable
from cds_hooks.models import HookRequest
from cds_hooks.services import CdsService, PrefetchData


def resources_of(value: Any) -> list[dict[str, Any]] | None:
    """Resources inside one prefetch value; ``None`` when the value says the key failed."""
    if value is None:
        return []
    if not isinstance(value, dict):
        return None
    resource_type = value.get("resourceType")
    if resource_type == "OperationOutcome":
        return None
    if resource_type == "Bundle":
        entries = value.get("entry") or []
        if not isinstance(entries, list):
            return None
        return [
            entry["resource"]
            for entry in entries
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict)
        ]
    if isinstance(resource_type, str):
        return [value]
    return None


def resolve(service: CdsService, request: HookRequest) -> PrefetchData:
    """Resolve the service's prefetch keys from the request alone."""
    supplied = request.prefetch or {}
    resources: dict[str, list[dict[str, Any]]] = {}
    failed: set[str] = set()
    for key in service.prefetch:
        if key not in supplied:
            failed.add(key)
            continue
        found = resources_of(supplied[key])
        if found is None:
            failed.add(key)
        else:
            resources[key] = found
    missing = sorted(failed & service.required_prefetch)
    if missing:
        raise DataUnavailable(
            f"Prefetch data not available: {', '.join(missing)}.",
            details=[{"prefetchKey": key} for key in missing],
        )
    return PrefetchData(resources=resources, failed=frozenset(failed))
