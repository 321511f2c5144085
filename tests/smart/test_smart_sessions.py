"""The SMART page's server-side state: encrypted, expiring, single-use where it must be.

Run over SQLite always and over PostgreSQL when CDS_TEST_POSTGRES_URL is set
(required in CI), because a launch may start on one worker or instance and
return on another.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from plugin.smart.sessions import ACTIVE, PENDING, SessionStore, new_secret
from plugin.storage.schema import smart_sessions
from plugin.storage.store import create_db_engine, migrate
from tests.support.clock import START, Clock


def _postgres_url() -> str:
    url = os.environ.get("CDS_TEST_POSTGRES_URL", "")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must provide CDS_TEST_POSTGRES_URL")
        pytest.skip("CDS_TEST_POSTGRES_URL is not set")
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'smart.sqlite3'}"
    else:
        url = _postgres_url()
    migrate(url)
    engine = create_db_engine(url)
    try:
        yield SessionStore(engine, Clock(START))
    finally:
        engine.dispose()


def test_round_trip_and_kind(store: SessionStore) -> None:
    secret = new_secret()
    store.put(secret, ACTIVE, {"patient": "p1", "n": 3}, 60)
    assert store.get(secret, ACTIVE) == {"patient": "p1", "n": 3}
    assert store.get(secret, ACTIVE) is not None  # get does not consume
    assert store.get(secret, PENDING) is None  # a session id is not a pending state


def test_take_is_single_use(store: SessionStore) -> None:
    secret = new_secret()
    store.put(secret, PENDING, {"verifier": "v"}, 60)
    assert store.take(secret, PENDING) == {"verifier": "v"}
    assert store.take(secret, PENDING) is None
    assert store.get(secret, PENDING) is None


def test_only_one_of_racing_takes_wins(store: SessionStore) -> None:
    secret = new_secret()
    store.put(secret, PENDING, {"verifier": "v"}, 60)
    results: list[Any] = []
    barrier = threading.Barrier(8)

    def take() -> None:
        barrier.wait()
        results.append(store.take(secret, PENDING))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r for r in results if r is not None] == [{"verifier": "v"}]


def test_expired_rows_are_gone_and_purged(store: SessionStore) -> None:
    old = new_secret()
    store.put(old, ACTIVE, {"x": 1}, 1)
    assert store.get(old, ACTIVE) == {"x": 1}
    clock: Clock = store.clock  # type: ignore[assignment]
    clock.now += timedelta(seconds=1)
    assert store.get(old, ACTIVE) is None
    assert store.take(old, ACTIVE) is None
    store.put(new_secret(), ACTIVE, {"x": 2}, 60)  # any write purges what has expired
    with store.engine.connect() as conn:
        hashes = set(conn.execute(sa.select(smart_sessions.c.key_hash)).scalars())
    assert hashlib.sha256(old.encode()).hexdigest() not in hashes


def test_payload_is_unreadable_without_the_secret(store: SessionStore) -> None:
    secret = new_secret()
    store.put(secret, ACTIVE, {"access_token": "tok-very-secret", "patient": "pat-77"}, 60)
    key_hash = hashlib.sha256(secret.encode()).hexdigest()
    with store.engine.connect() as conn:
        payload = conn.execute(
            sa.select(smart_sessions.c.payload).where(smart_sessions.c.key_hash == key_hash)
        ).scalar_one()
    assert "tok-very-secret" not in payload
    assert "pat-77" not in payload
    assert store.get(secret + "x", ACTIVE) is None
    assert store.get("", ACTIVE) is None
    assert store.get("x" * 10_000, ACTIVE) is None


def test_drop_ends_a_session(store: SessionStore) -> None:
    secret = new_secret()
    store.put(secret, ACTIVE, {"x": 1}, 60)
    store.drop(secret)
    assert store.get(secret, ACTIVE) is None
