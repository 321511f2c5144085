"""The one call pipeline, shared by CDS Hooks calls and the SMART page.

A call goes one way: authenticate, parse, resolve data, evaluate, suppress and record, render.
The first two steps belong to the caller, because they differ: a CDS Hooks call
(``views.call_service``) checks the EHR's JWT and parses the JSON body; the SMART page
(``plugin.smart``) checks its session and builds the requests an EHR would send. From a
``HookRequest`` on, both use :class:`Pipeline`: the data is resolved through the app's one
:class:`~cds_hooks.prefetch.FhirAccess`, the service evaluates it, and suppression drops the
cards a clinician overrode (one read) and seals each card's record into its uuid (no write).

Each step is timed with :func:`phase`; the totals go into the call's one log line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from cds_hooks.models import HookRequest
from cds_hooks.prefetch import FhirAccess
from cds_hooks.services import CdsService, Evaluation, Fitted, IssuedCard, ServiceRegistry
from plugin.api import metrics
from plugin.context import this_app, this_g
from plugin.security.auth import Caller
from plugin.storage.suppression import Suppressions, subject_of


class phase:
    """Time one phase of the call; the totals go into the call's log line.

    A class rather than a generator-based context manager, which costs about 0.7 µs more
    per phase (a call passes through a dozen)."""

    __slots__ = ("name", "start")

    def __init__(self, name: str) -> None:
        self.name = name
        self.start = 0.0

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _tb: object
    ) -> None:
        if isinstance(error, Exception):
            metrics.phase_failed(self.name, error)
        timings: dict[str, float] = this_g().setdefault("timings", {})
        timings[self.name] = round((time.perf_counter() - self.start) * 1000, 2)


@dataclass(frozen=True, slots=True)
class Pipeline:
    """The parts a call needs, built once in ``create_app``."""

    registry: ServiceRegistry
    fhir: FhirAccess
    suppressions: Suppressions
    max_cards: int

    def evaluate(self, service: CdsService, hook_request: HookRequest) -> Evaluation:
        """Resolve the service's data for the request and evaluate it: every card, uncut."""
        service.check_request(hook_request)
        with phase("prefetch"):
            data = self.fhir.resolve(service, hook_request)
        metrics.count_prefetch(service.id, data.failed)
        with phase("rules"):
            evaluation = service.evaluate(hook_request, data)
        _count_reading(service.id, evaluation)
        return evaluation

    def issue(
        self,
        service: CdsService,
        hook_request: HookRequest,
        evaluation: Evaluation,
        caller: Caller | None = None,
    ) -> Fitted:
        """Drop suppressed cards, fit the rest under ``max_cards`` (a suppressed card makes
        room for the next most urgent one; the service merges related advice before it cuts)
        and give each card shown a uuid that carries its record, scoped to the verified caller
        and the request's FHIR server."""
        with phase("storage"):
            if not evaluation.issued:
                # No card to suppress or seal: what ``Suppressions.issue`` gives, without
                # reading the subject (the request's ids, caller and FHIR server).
                return Fitted([])
            return self.suppressions.issue(
                service.id,
                hook_request.hookInstance,
                subject_of(hook_request, evaluation, caller),
                evaluation.issued,
                limit=self.max_cards,
                fit=service.fit,
            )

    def run(
        self, service: CdsService, hook_request: HookRequest, caller: Caller | None = None
    ) -> list[IssuedCard]:
        """A whole CDS Hooks call from its parsed request: the cards to answer."""
        evaluation = self.evaluate(service, hook_request)
        fitted = self.issue(service, hook_request, evaluation, caller)
        issued = fitted.issued
        call_log = this_g().call_log
        call_log["cards"] = len(issued)
        call_log["evaluated"] = len(evaluation.issued)
        if fitted.cut:
            # Finding keys only (no patient data): which advice the cap still left out.
            call_log["cut"] = list(fitted.cut)
            metrics.count_cut(service.id, fitted.cut)
        metrics.count_cards(service.id, (item.finding for item in issued))
        return issued


def _count_reading(service_id: str, evaluation: Evaluation) -> None:
    """Resources left out as malformed, or read leniently: into the call's log and metrics."""
    counts = {"skipped": evaluation.skipped, "read_leniently": evaluation.read_leniently}
    counts = {how: n for how, n in counts.items() if n}
    if not counts:
        return
    call_log = this_g().get("call_log")
    if call_log is not None:
        call_log["resources"] = counts
    metrics.count_resources(service_id, counts)


def get_pipeline() -> Pipeline:
    pipeline: Pipeline = this_app().extensions["cds_pipeline"]
    return pipeline
