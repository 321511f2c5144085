"""FHIR resources and Bundles for tests, defined once."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def searchset(
    resources: Iterable[dict[str, Any]] = (),
    next_url: str | None = None,
    *,
    total: bool = False,
    match: bool = False,
) -> dict[str, Any]:
    """A search result Bundle; ``next_url`` adds a next link, ``total`` the count and ``match``
    each entry's search mode, as some servers send them."""
    entries = list(resources)
    body: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": r, "search": {"mode": "match"}} if match else {"resource": r}
            for r in entries
        ],
    }
    if total:
        body["total"] = len(entries)
    if next_url:
        body["link"] = [{"relation": "next", "url": next_url}]
    return body


def collection(resources: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }
