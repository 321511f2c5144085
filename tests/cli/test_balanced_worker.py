"""The balanced gthread worker (plugin.cli.balanced): the rule on its own, the table the
master keeps, and the real server splitting kept-alive connections evenly over its workers,
also after a worker is killed."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from plugin.cli.balanced import FREE, STALE_S, Board, fair_share
from tests.support.service_process import ServiceProcess

CONNECTIONS = 16


def test_a_worker_takes_a_connection_while_no_other_holds_fewer() -> None:
    assert fair_share(0, [])
    assert fair_share(5, [])  # alone: always
    assert fair_share(3, [3, 7])
    assert fair_share(2, [3])
    assert not fair_share(4, [3])
    assert not fair_share(8, [9, 2])


def test_the_table_gives_each_worker_a_row_and_frees_it() -> None:
    board = Board(3)
    assert board.others(0) == []  # no live worker yet
    first = board.claim(set())
    second = board.claim({first} if first is not None else set())
    assert (first, second) == (0, 1)
    board.publish(0, 4)
    board.publish(1, 6)
    assert board.others(0) == [6] and board.others(1) == [4]
    board.release(1)
    assert board.counts[1] == FREE and board.others(0) == []
    assert board.claim({0}) == 1 and board.counts[1] == 0  # a replacement starts at zero
    assert board.claim({0, 1, 2}) is None  # full: the worker accepts as plain gthread does


def test_a_worker_that_stopped_publishing_is_not_counted() -> None:
    now = [100.0]
    board = Board(2, clock=lambda: now[0])
    board.claim(set())
    board.claim({0})
    board.publish(0, 9)
    board.publish(1, 2)  # then hangs
    now[0] += STALE_S - 0.5
    board.publish(0, 9)
    assert board.others(0) == [2]  # still counted: worker 0 holds back
    now[0] += 1.0
    assert board.others(0) == []  # stale: worker 0 takes connections again
    board.publish(1, 2)
    assert board.others(0) == [2]  # back once it publishes again


def _server_sockets(port: int) -> dict[int, int]:
    """Established server-side sockets on ``port``: the client's port -> socket inode."""
    found: dict[int, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
        if state == "01" and int(local.split(":")[1], 16) == port:
            found[int(remote.split(":")[1], 16)] = inode
    return found


def _owners(pids: list[int]) -> dict[int, int]:
    """Socket inode -> the worker pid holding it."""
    owners: dict[int, int] = {}
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        for fd in fds.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                owners[int(target[8:-1])] = pid
    return owners


def _open_and_ask(port: int, count: int) -> list[socket.socket]:
    """``count`` connections opened at once, then one kept-alive request on each."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    for sock in socks:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    for sock in socks:
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(4096)
            assert chunk, "connection closed before the answer"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
    return socks


def _split(service: ServiceProcess, socks: list[socket.socket]) -> Counter[int]:
    inodes = _server_sockets(service.port)
    owners = _owners(service.workers())
    held = Counter(owners[inodes[sock.getsockname()[1]]] for sock in socks)
    assert sum(held.values()) == len(socks)
    return held


@pytest.fixture()
def balanced(tmp_path: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess(tmp_path / "balanced", workers=2, args=("--worker-class", "balanced"))
    _wait_for_two_workers(process)
    yield process
    process.stop()


def _wait_for_two_workers(service: ServiceProcess, exclude: int | None = None) -> None:
    """Until the master runs two workers (it forks them a moment apart; the first one alone
    takes every connection, as it should)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pids = service.workers()
        if len(pids) == 2 and exclude not in pids:
            return
        time.sleep(0.05)
    raise AssertionError(f"the master runs {service.workers()}")


def test_kept_alive_connections_opened_at_once_are_split_evenly(
    balanced: ServiceProcess,
) -> None:
    for _ in range(3):  # as wrk opens them, figure after figure
        socks = _open_and_ask(balanced.port, CONNECTIONS)
        try:
            held = _split(balanced, socks)
            assert len(held) == 2, held
            assert max(held.values()) - min(held.values()) <= 2, held
        finally:
            for sock in socks:
                sock.close()
        time.sleep(0.2)  # the workers see the connections closed


def test_a_killed_worker_leaves_no_worker_holding_back(balanced: ServiceProcess) -> None:
    socks = _open_and_ask(balanced.port, CONNECTIONS)
    try:
        victim = balanced.workers()[0]
        os.kill(victim, signal.SIGKILL)
        # The master frees the dead worker's row and starts another: the survivor, holding
        # its 8, does not wait on the dead worker's count, and the new worker takes its share.
        _wait_for_two_workers(balanced, exclude=victim)
        more = _open_and_ask(balanced.port, CONNECTIONS)
        socks += more
        held = _split(balanced, more)
        assert victim not in held and len(held) == 2, held
    finally:
        for sock in socks:
            sock.close()


def _answers(sock: socket.socket, count: int) -> bytes:
    received = b""
    while received.count(b'{"status":"ok"}') < count:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {received.count(b'HTTP/1.1 200')} answers"
        received += chunk
    return received


def test_a_kept_alive_connection_is_answered_at_once_later_and_pipelined(
    balanced: ServiceProcess,
) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", balanced.port), timeout=10) as sock:
        for _ in range(50):  # each as soon as the last is answered: the thread lingering
            sock.sendall(request)
            assert _answers(sock, 1).startswith(b"HTTP/1.1 200")
        time.sleep(0.2)  # past LINGER_S: the connection is back with the poller
        sock.sendall(request)
        assert _answers(sock, 1).startswith(b"HTTP/1.1 200")
        sock.sendall(request * 3)  # pipelined: the next requests read ahead with the first
        answers = _answers(sock, 3)
        assert answers.count(b"HTTP/1.1 200") == 3
