"""Prometheus metrics and the ``/metrics`` endpoint.

Under gunicorn every worker is a process of its own, so the counters live in
prometheus-client's multi-process mode: each worker writes its values to
memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR`` (set up by
:func:`enable_multiprocess` in ``mkopper-cds serve``) and ``/metrics`` sums the
files of all workers, whichever worker answers the scrape. Without that
directory (tests, the development server) each app keeps its own registry.

Labels are bounded on purpose: a service id that is not in the registry is
counted as ``(unknown)``, so a client cannot grow the label set by calling
made-up URLs. No label carries a patient id, a token or resource content.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from plugin.context import this_app, this_g, this_request

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNKNOWN = "(unknown)"
# Service calls take milliseconds; the buckets resolve the 25 ms and 100 ms targets
# (docs/operations.md) and still show a slow FHIR server.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.015,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
ENDPOINTS = {
    "cds.discovery": "discovery",
    "cds.call_service": "call",
    "cds.post_feedback": "feedback",
    "cds.healthz": "healthz",
    "cds.readyz": "readyz",
    "metrics": "metrics",
}


def enable_multiprocess(directory: Path) -> None:
    """Count across gunicorn workers, in files under ``directory`` (emptied first).

    Must run in the master before the app is built: prometheus-client picks its
    value class from the environment when first imported, so it is chosen again here.
    """
    if directory.exists():
        # Files left by the workers of an earlier run would be summed into this one's.
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def mark_worker_dead(pid: int) -> None:
    """Called by the gunicorn master when a worker exits (frees its live gauges)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class Metrics:
    """The service's metrics, registered in one registry per app."""

    registry: CollectorRegistry
    requests: Counter
    request_seconds: Histogram
    phase_seconds: Histogram
    http_errors: Counter
    cards_issued: Counter
    prefetch_failures: Counter
    phase_errors: Counter
    feedback_items: Counter
    resources_read: Counter
    cards_cut: Counter
    # Each labelled child once: ``labels()`` checks and joins its arguments on every call
    # (about 5 µs), and the labels are a bounded set (see the module).
    children: dict[tuple[int, tuple[str, ...]], Any] = field(default_factory=dict)

    def child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, made once per process and label set."""
        key = (id(metric), labels)
        found = self.children.get(key)
        if found is None:
            found = self.children[key] = metric.labels(*labels)
        return found


def _build() -> Metrics:
    registry = CollectorRegistry(auto_describe=True)
    return Metrics(
        registry=registry,
        requests=Counter(
            "cds_requests",
            "HTTP requests answered, by endpoint, CDS service and status code.",
            ["endpoint", "service", "status"],
            registry=registry,
        ),
        request_seconds=Histogram(
            "cds_request_duration_seconds",
            "Time from request to response inside the service, by endpoint and CDS service.",
            ["endpoint", "service"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        phase_seconds=Histogram(
            "cds_phase_duration_seconds",
            "Time spent in each phase of a call (auth, parse, prefetch, rules, storage, cards).",
            ["service", "phase"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        http_errors=Counter(
            "cds_http_errors",
            "Error responses by class (4xx: the caller's request; 5xx: the service or "
            "what it depends on) and status code.",
            ["status_class", "status"],
            registry=registry,
        ),
        cards_issued=Counter(
            "cds_cards_issued",
            "Cards returned to the EHR, by CDS service and guideline finding.",
            ["service", "finding"],
            registry=registry,
        ),
        prefetch_failures=Counter(
            "cds_fhir_fetch_failures",
            "Prefetch keys whose FHIR data could not be had: the EHR's prefetch failed "
            "and fetching from the FHIR server failed or was not possible.",
            ["service", "key"],
            registry=registry,
        ),
        phase_errors=Counter(
            "cds_phase_errors",
            "Calls ended by an error in a phase, by phase and error code; phase "
            "`prefetch` counts FHIR servers that failed or refused.",
            ["service", "phase", "code"],
            registry=registry,
        ),
        feedback_items=Counter(
            "cds_feedback_items",
            "Feedback items received, by CDS service and result: `recorded` (stored now), "
            "`duplicates` (a retry: nothing changed), `unknown` (a card not issued to the "
            "caller, or past retention: not stored).",
            ["service", "result"],
            registry=registry,
        ),
        resources_read=Counter(
            "cds_resources_unusual",
            "FHIR resources the rules' reading did not take as given, by CDS service and how: "
            "`skipped` (malformed, left out) or `read_leniently` (failed strict R4 validation "
            "but names m-kopper, read field by field). Only what the rules read counts.",
            ["service", "how"],
            registry=registry,
        ),
        cards_cut=Counter(
            "cds_cards_cut",
            "Findings left out of an answer by the card cap (CDS_MAX_CARDS) after related "
            "advice was merged, by CDS service and finding.",
            ["service", "finding"],
            registry=registry,
        ),
    )


def _metrics() -> Metrics:
    metrics: Metrics = this_app().extensions["cds_metrics"]
    return metrics


def _service_label(service_id: str | None, registry: Any) -> str:
    if not service_id:
        return ""
    known = registry is not None and any(service.id == service_id for service in registry)
    return service_id if known else UNKNOWN


def count_cards(service_id: str, findings: Iterable[str]) -> None:
    """One count per card issued, under the finding it was rendered from."""
    metrics = _metrics()
    for finding in findings:
        metrics.child(metrics.cards_issued, service_id, finding).inc()


def count_feedback(service_id: str, counts: Mapping[str, int]) -> None:
    """Count one feedback post's items by what became of them."""
    counter = _metrics().feedback_items
    for result in ("recorded", "duplicates", "unknown"):
        if counts.get(result):
            counter.labels(service=service_id, result=result).inc(counts[result])


def count_resources(service_id: str, counts: Mapping[str, int]) -> None:
    """Count one call's resources that were skipped or read leniently."""
    counter = _metrics().resources_read
    for how, count in counts.items():
        counter.labels(service=service_id, how=how).inc(count)


def count_cut(service_id: str, findings: Iterable[str]) -> None:
    """One count per finding the card cap left out of an answer."""
    counter = _metrics().cards_cut
    for finding in findings:
        counter.labels(service=service_id, finding=finding).inc()


def count_prefetch(service_id: str, failed_keys: Iterable[str]) -> None:
    """Count the prefetch keys that ended up without data (``PrefetchData.failed``)."""
    counter = _metrics().prefetch_failures
    for key in failed_keys:
        counter.labels(service=service_id, key=key).inc()


def phase_failed(name: str, error: BaseException) -> None:
    """Note that phase ``name`` ended the call with ``error`` (counted with the response).

    Only the error's code is kept, never its message. A failed ``prefetch`` phase is
    how an unreachable or refusing FHIR server shows.
    """
    code = getattr(error, "code", None)
    this_g().metrics_phase_error = (name, code if isinstance(code, str) else "unexpected")


def _start_timer() -> None:
    this_g().metrics_start = time.perf_counter()


def _record(response: Response) -> Response:
    extensions = this_app().extensions
    metrics = _metrics()
    context = this_g()
    request = this_request()
    start = context.get("metrics_start")
    # Route names are a fixed set; a URL that matched no route counts as "(none)".
    endpoint = ENDPOINTS.get(request.endpoint or "", request.endpoint or "(none)")
    service = _service_label(
        (request.view_args or {}).get("service_id"), extensions.get("cds_registry")
    )
    status = response.status_code
    metrics.child(metrics.requests, endpoint, service, str(status)).inc()
    if start is not None:
        metrics.child(metrics.request_seconds, endpoint, service).observe(
            time.perf_counter() - start
        )
    for name, ms in context.get("timings", {}).items():
        metrics.child(metrics.phase_seconds, service, name).observe(ms / 1000)
    failed = context.get("metrics_phase_error")
    if failed is not None:
        metrics.phase_errors.labels(service=service, phase=failed[0], code=failed[1]).inc()
    if status >= 400:
        status_class = "5xx" if status >= 500 else "4xx"
        metrics.http_errors.labels(status_class=status_class, status=str(status)).inc()
    return response


def metrics_view() -> Response:
    registry = _metrics().registry
    if os.environ.get(MULTIPROC_ENV):
        # Summed over every worker's files; a fresh registry per scrape, as the
        # multi-process collector must not share one with live metrics.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    body = generate_latest(registry)
    return Response(body, mimetype=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    app.extensions["cds_metrics"] = _build()
    app.before_request(_start_timer)
    app.after_request(_record)
    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
