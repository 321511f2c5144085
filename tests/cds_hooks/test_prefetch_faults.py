"""Fault tests over real loopback sockets: every failure answers within the budget + 10%.

A small ``http.server`` stands in for a misbehaving FHIR server; the mode is the
first path segment of the ``fhirServer`` base, so each test names its fault in
the URL. Each case checks the answer (412 or the data that could be had), the
elapsed time, and that the fetch threads are free again afterwards.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import wait
from typing import Any

import pytest

from cds_hooks.errors import DataUnavailable
from cds_hooks.fhir import Allowlist, ClientLimits, FhirClient
from cds_hooks.models import HookRequest
from cds_hooks.prefetch import resolve
from cds_hooks.services import CdsService, Evaluation, PrefetchData
from tests.support import fhir_faults
from tests.support.fhir_faults import FAULTS, PEERS, AcceptRecorder

BUDGET_MS = 500
LIMIT_S = BUDGET_MS / 1000 * 1.10
TOKEN = "fault-token-31415"

recorder = fhir_faults.recorder  # pytest fixtures, used by name
fault_server = fhir_faults.fault_server


@pytest.fixture
def client() -> Iterator[FhirClient]:
    with FhirClient(ClientLimits(timeout_s=2.0, connect_timeout_s=2.0, pool_size=4)) as c:
        yield c


def service(keys: int = 1, required: bool = True) -> CdsService:
    def evaluate(_request: HookRequest, _data: PrefetchData) -> Evaluation:
        return Evaluation()

    prefetch = {f"k{i}": f"Condition?patient={{{{context.patientId}}}}&n={i}" for i in range(keys)}
    return CdsService(
        id="faults",
        hook="patient-view",
        title="t",
        description="t",
        prefetch=prefetch,
        evaluate=evaluate,
        required_prefetch=frozenset(prefetch) if required else frozenset(),
    )


def hook_request(base: str) -> HookRequest:
    return HookRequest.model_validate(
        {
            "hook": "patient-view",
            "hookInstance": "0f4c1a43-2c7e-4b0c-9d0a-1b1c2d3e4f50",
            "fhirServer": base,
            "fhirAuthorization": {
                "access_token": TOKEN,
                "token_type": "Bearer",
                "expires_in": 60,
                "scope": "patient/*.read",
                "subject": "cds",
            },
            "context": {"patientId": "p1", "userId": "Practitioner/u1"},
        }
    )


def timed_resolve(base: str, client: FhirClient, svc: CdsService) -> tuple[Any, float]:
    """(PrefetchData or the DataUnavailable raised, seconds taken); any other error fails."""
    started = time.monotonic()
    try:
        outcome: Any = resolve(
            svc, hook_request(base), client=client, budget_ms=BUDGET_MS, allowed=Allowlist([base])
        )
    except DataUnavailable as exc:
        outcome = exc
    return outcome, time.monotonic() - started


def assert_workers_free(client: FhirClient) -> None:
    """Every fetch thread can take new work right away: none is stuck on a socket.

    Each probe waits at a barrier for all the others, so they only finish when every
    thread of the pool runs one at the same time.
    """
    size = client.limits.pool_size
    barrier = threading.Barrier(size)
    futures = [client.executor.submit(barrier.wait, 0.5) for _ in range(size)]
    done, _ = wait(futures, timeout=1.0)
    assert len(done) == size
    assert all(f.exception() is None for f in done), "a fetch thread is still busy"


@pytest.mark.parametrize("mode", FAULTS)
def test_failing_server_gives_412_within_budget(
    fault_server: str, client: FhirClient, mode: str
) -> None:
    outcome, elapsed = timed_resolve(f"{fault_server}/{mode}", client, service(keys=2))
    assert isinstance(outcome, DataUnavailable)
    assert outcome.status == 412
    assert sorted(d["prefetchKey"] for d in outcome.details) == ["k0", "k1"]
    assert TOKEN not in json.dumps(outcome.to_json())
    assert elapsed <= LIMIT_S
    assert_workers_free(client)


@pytest.mark.parametrize("mode", ["slow", "trickle", "500"])
def test_failing_server_leaves_optional_keys_unknown(
    fault_server: str, client: FhirClient, mode: str
) -> None:
    outcome, elapsed = timed_resolve(
        f"{fault_server}/{mode}", client, service(keys=2, required=False)
    )
    assert isinstance(outcome, PrefetchData)
    assert outcome.failed == {"k0", "k1"}
    assert elapsed <= LIMIT_S
    assert_workers_free(client)


def test_server_down(client: FhirClient) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    outcome, elapsed = timed_resolve(f"http://127.0.0.1:{port}/fhir", client, service())
    assert isinstance(outcome, DataUnavailable)
    assert elapsed <= LIMIT_S
    assert_workers_free(client)


def test_unroutable_server_times_out_within_budget(client: FhirClient) -> None:
    # A listening socket that never accepts: the connection hangs in the backlog or SYN queue.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    fillers = []
    try:
        for _ in range(4):  # fill the backlog so later connects stall
            filler = socket.socket()
            filler.setblocking(False)
            try:
                filler.connect(("127.0.0.1", sock.getsockname()[1]))
            except BlockingIOError:
                pass
            fillers.append(filler)
        outcome, elapsed = timed_resolve(
            f"http://127.0.0.1:{sock.getsockname()[1]}", client, service()
        )
        assert isinstance(outcome, DataUnavailable)
        assert elapsed <= LIMIT_S
        assert_workers_free(client)
    finally:
        for filler in fillers:
            filler.close()
        sock.close()


def test_five_thousand_entries(fault_server: str, client: FhirClient) -> None:
    outcome, elapsed = timed_resolve(f"{fault_server}/big", client, service())
    assert isinstance(outcome, PrefetchData)
    assert len(outcome.get("k0") or []) == 5000
    assert elapsed <= LIMIT_S


def test_next_link_to_another_host_is_not_followed(
    fault_server: str, client: FhirClient, recorder: AcceptRecorder
) -> None:
    outcome, elapsed = timed_resolve(f"{fault_server}/nextother", client, service())
    # The first page alone is not the whole search: the required key is not had (412).
    assert isinstance(outcome, DataUnavailable)
    assert elapsed <= LIMIT_S
    time.sleep(0.1)
    assert recorder.accepted == 0


def test_server_not_on_allowlist_never_gets_a_connection(
    client: FhirClient, recorder: AcceptRecorder
) -> None:
    base = f"http://127.0.0.1:{recorder.port}/fhir"
    with pytest.raises(DataUnavailable):
        resolve(
            service(),
            hook_request(base),
            client=client,
            budget_ms=BUDGET_MS,
            allowed=Allowlist([f"http://127.0.0.1:{recorder.port}/other"]),
        )
    # Same host and port, a path prefix of the allowed base: still not allowed.
    with pytest.raises(DataUnavailable):
        resolve(
            service(),
            hook_request(f"http://127.0.0.1:{recorder.port}"),
            client=client,
            budget_ms=BUDGET_MS,
            allowed=Allowlist([base]),
        )
    time.sleep(0.1)
    assert recorder.accepted == 0
    # The recorder does count a connection when one is allowed (the test can fail).
    with pytest.raises(DataUnavailable):
        resolve(
            service(),
            hook_request(base),
            client=client,
            budget_ms=BUDGET_MS,
            allowed=Allowlist([base]),
        )
    time.sleep(0.1)
    assert recorder.accepted >= 1


def test_keys_are_fetched_in_parallel(fault_server: str, client: FhirClient) -> None:
    # Four keys of 0.3 s each: in series 1.2 s, beyond the budget; in parallel about 0.3 s.
    outcome, elapsed = timed_resolve(f"{fault_server}/delay", client, service(keys=4))
    assert isinstance(outcome, PrefetchData)
    assert not outcome.failed
    assert all(
        outcome.get(f"k{i}") == [{"resourceType": "Condition", "id": "late"}] for i in range(4)
    )
    assert elapsed <= LIMIT_S


def test_mixed_keys_keep_what_arrived(fault_server: str, client: FhirClient) -> None:
    # Both keys share the base; the first path segment of each template picks its fault.
    svc = CdsService(
        id="mixed",
        hook="patient-view",
        title="t",
        description="t",
        prefetch={
            "good": "ok/Condition?patient={{context.patientId}}",
            "bad": "slow/Observation?patient={{context.patientId}}",
        },
        evaluate=lambda _r, _d: Evaluation(),
        required_prefetch=frozenset({"good"}),
    )
    outcome, elapsed = timed_resolve(fault_server, client, svc)
    assert isinstance(outcome, PrefetchData)
    assert outcome.get("good") == [{"resourceType": "Condition", "id": "ok"}]
    assert outcome.failed == {"bad"}
    assert elapsed <= LIMIT_S


def test_connections_are_pooled(fault_server: str, client: FhirClient) -> None:
    for _ in range(5):
        outcome, _ = timed_resolve(f"{fault_server}/ok", client, service())
        assert isinstance(outcome, PrefetchData)
    assert len(PEERS) == 1  # one kept-alive connection served all five calls


def test_saturated_pool_still_answers_within_budget(fault_server: str) -> None:
    # One fetch thread, three keys of 0.3 s: the first arrives, the second runs out of
    # budget, the third never starts. The answer still comes within the budget.
    with FhirClient(ClientLimits(timeout_s=2.0, pool_size=1)) as single:
        outcome, elapsed = timed_resolve(
            f"{fault_server}/delay", single, service(keys=3, required=False)
        )
        assert isinstance(outcome, PrefetchData)
        assert len(outcome.failed) == 2
        assert elapsed <= LIMIT_S
        assert_workers_free(single)
