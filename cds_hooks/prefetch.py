"""Prefetch resolution: the request's prefetch, and fetches for what it lacks, as PrefetchData.

For each template key a service declares:

- present: a Bundle gives its entries' resources, a single resource gives itself;
- ``null``: known to be empty;
- an OperationOutcome: that key failed (the EHR tried; it is not asked again);
- absent: fetched from ``fhirServer`` with the ``fhirAuthorization`` bearer token,
  every absent key in parallel, the whole fetch inside one time budget.

A key that cannot be had is named in ``PrefetchData.failed`` (the rules treat it as
unknown). When it is one the service requires, the answer is the spec's 412
(``DataUnavailable``) naming the key, never the data.

A ``fhirServer`` that is not on the allowlist gets no connection at all; its keys
are unavailable, which gives 412 when the service requires them. The spec asks
for 412 when the service cannot reach the FHIR server to get what it needs, and
the EHR learns no more about the allowlist than that the data could not be had.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from cds_hooks.errors import CdsError, DataUnavailable
from cds_hooks.fhir import Allowlist, FetchResult, FhirClient
from cds_hooks.models import HookRequest
from cds_hooks.services import CdsService, PrefetchData

logger = logging.getLogger(__name__)

DEFAULT_BUDGET_MS = 1500
# Extra wait beyond the budget, as a share of it, for a fetch that fails right at the
# deadline to report back (its own socket timeouts end at the deadline). Small enough
# that the whole call stays well inside budget + 10%.
GRACE_SHARE = 0.03

TOKEN = re.compile(r"\{\{\s*([^{}\s]+)\s*\}\}")
# CDS Hooks 2.0.1 user tokens: the id part of context.userId when it names this type.
USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


class UnfillableTemplate(ValueError):
    """A prefetch token has no value in this request; carries the token name only."""


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
            resource
            for entry in entries
            if isinstance(entry, dict) and isinstance(resource := entry.get("resource"), dict)
        ]
    if isinstance(resource_type, str):
        return [value]
    return None


def _token_value(name: str, context: Mapping[str, Any]) -> str:
    if name.startswith("context."):
        value: Any = context
        for part in name.split(".")[1:]:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
            raise UnfillableTemplate(name)
        return str(value)
    resource_type = USER_TOKENS.get(name)
    user = context.get("userId")
    if resource_type is not None and isinstance(user, str):
        kind, _, ident = user.partition("/")
        if kind == resource_type and ident and "/" not in ident:
            return ident
    raise UnfillableTemplate(name)


def _encoded(name: str, context: Mapping[str, Any]) -> str:
    value = _token_value(name, context)
    if value in (".", ".."):  # a dot segment would move the URL's path, not name an id
        raise UnfillableTemplate(name)
    try:
        return quote(value, safe="")
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form, so no URL form
        raise UnfillableTemplate(name) from None


def fill_template(template: str, context: Mapping[str, Any]) -> str:
    """The template with every ``{{token}}`` replaced by its URL-encoded value."""
    return TOKEN.sub(lambda m: _encoded(m.group(1), context), template)


def resolve(
    service: CdsService,
    request: HookRequest,
    *,
    client: FhirClient | None = None,
    budget_ms: int = DEFAULT_BUDGET_MS,
    allowed: Allowlist | None = None,
) -> PrefetchData:
    """Resolve the service's prefetch keys from the request, fetching the absent ones.

    Without ``client`` nothing is fetched. ``allowed`` is the FHIR server allowlist, parsed
    once where the settings are read (``None`` or empty: no server is allowed). Raises
    ``DataUnavailable`` (412) when a key in ``service.required_prefetch`` cannot be had.
    """
    supplied = request.prefetch or {}
    resources: dict[str, list[dict[str, Any]]] = {}
    failed: set[str] = set()
    absent: list[str] = []
    for key in service.prefetch:
        if key not in supplied:
            absent.append(key)
            continue
        found = resources_of(supplied[key])
        if found is None:
            failed.add(key)
        else:
            resources[key] = found
    if absent:
        fetched = _fetch(service, request, absent, client, budget_ms, allowed)
        resources.update(fetched)
        failed.update(key for key in absent if key not in fetched)
    missing = sorted(failed & service.required_prefetch)
    if missing:
        raise DataUnavailable(
            f"Prefetch data not available: {', '.join(missing)}.",
            details=[{"prefetchKey": key} for key in missing],
        )
    return PrefetchData(resources=resources, failed=frozenset(failed))


def _fetch(
    service: CdsService,
    request: HookRequest,
    keys: list[str],
    client: FhirClient | None,
    budget_ms: int,
    allowed: Allowlist | None,
) -> dict[str, list[dict[str, Any]]]:
    """Fetch ``keys`` in parallel within the budget; keys that fail are left out."""
    base = request.fhir_server_base
    if client is None or base is None:
        return {}
    if allowed is None or not allowed.allows(base):
        # No connection at all: the token must not reach a server nobody vouched for.
        logger.warning(
            "fhirServer is not on CDS_ALLOWED_FHIR_SERVERS; %d prefetch keys not fetched", len(keys)
        )
        return {}
    token = request.fhirAuthorization.access_token if request.fhirAuthorization else None
    deadline = time.monotonic() + max(budget_ms, 0) / 1000
    futures: dict[Future[FetchResult], str] = {}
    for key in keys:
        try:
            relative = fill_template(service.prefetch[key], request.context)
        except UnfillableTemplate as exc:
            logger.info("prefetch key %s: token %s has no value in this request", key, exc)
            continue
        futures[client.executor.submit(client.fetch, base, relative, token, deadline)] = key
    if not futures:
        return {}
    grace = max(budget_ms, 0) / 1000 * GRACE_SHARE
    done, not_done = wait(futures, timeout=max(deadline - time.monotonic(), 0) + grace)
    for future in not_done:
        future.cancel()  # queued fetches never start; running ones stop at the deadline
        logger.warning(
            "prefetch key %s: fetch did not finish within %d ms", futures[future], budget_ms
        )
    fetched: dict[str, list[dict[str, Any]]] = {}
    for future in done:
        key = futures[future]
        try:
            result = future.result()
        except CdsError as exc:
            logger.warning("prefetch key %s: %s", key, exc.code)
        except Exception as exc:  # noqa: BLE001  one key's bad answer costs that key, not a 500
            logger.error("prefetch key %s: unexpected %s", key, type(exc).__name__)
        else:
            if result.truncated:
                # Part of a search is not the whole record: the missing pages could hold the
                # very Condition that matters, so the key is unknown, never "nothing found".
                logger.warning(
                    "prefetch key %s: search cut short after %d pages", key, result.pages
                )
            else:
                fetched[key] = result.resources
    return fetched


@dataclass(frozen=True, slots=True)
class FhirAccess:
    """The one FHIR client of a running service, with the allowlist and time budget it
    fetches under; every caller that resolves data (CDS calls, the SMART page) goes
    through it."""

    client: FhirClient
    allowed: Allowlist
    budget_ms: int = DEFAULT_BUDGET_MS

    def resolve(self, service: CdsService, request: HookRequest) -> PrefetchData:
        return resolve(
            service, request, client=self.client, budget_ms=self.budget_ms, allowed=self.allowed
        )
