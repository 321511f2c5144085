"""The JWT replay cache: one insert per signed call, expired ids deleted once a minute.

Run on SQLite, and on PostgreSQL when ``CDS_TEST_POSTGRES_URL`` names one (as in CI)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from plugin.storage.store import JTI_PURGE_INTERVAL, Store, create_db_engine, migrate
from tests.support.service_process import fresh_schema, postgres_url

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


class MovingClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'cds.sqlite3'}"
        migrate(url)
        yield url
        return
    with fresh_schema(postgres_url()) as url:
        migrate(url)
        yield url


@pytest.fixture
def clock() -> MovingClock:
    return MovingClock()


@pytest.fixture
def store(database: str, clock: MovingClock) -> Iterator[Store]:
    engine = create_db_engine(database)
    yield Store(engine, clock=clock)
    engine.dispose()


def remembered(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT COUNT(*) FROM jwt_replay")).scalar_one())


def test_an_id_is_taken_once_until_it_expires(store: Store, clock: MovingClock) -> None:
    expires = T0 + timedelta(minutes=5)
    assert store.remember_jti("ehr|a", expires) is True
    assert store.remember_jti("ehr|a", expires) is False
    clock.now = expires - timedelta(seconds=1)
    assert store.remember_jti("ehr|a", expires) is False
    # Past its expiry (and so past its token's): the same id in a new token is no replay,
    # whether or not the expired row has been deleted yet.
    clock.now = expires + timedelta(seconds=1)
    assert store.remember_jti("ehr|a", expires + timedelta(minutes=5)) is True
    assert store.remember_jti("ehr|a", expires + timedelta(minutes=5)) is False


def test_expired_ids_are_deleted_once_per_interval_not_on_every_call(
    store: Store, clock: MovingClock
) -> None:
    assert store.remember_jti("ehr|old", T0 + timedelta(seconds=10)) is True  # purges (first)
    clock.now = T0 + timedelta(seconds=30)
    assert store.remember_jti("ehr|new", T0 + timedelta(minutes=5)) is True
    assert remembered(store) == 2  # "old" has expired, but no purge within the interval
    clock.now = T0 + JTI_PURGE_INTERVAL
    assert store.remember_jti("ehr|newer", T0 + timedelta(minutes=6)) is True
    assert remembered(store) == 2  # "old" deleted, "new" and "newer" kept
    assert store.remember_jti("ehr|new", T0 + timedelta(minutes=5)) is False


def test_threads_racing_with_one_id_get_exactly_one_yes(store: Store) -> None:
    # Each statement commits on its own: the insert alone decides, atomically, who was first.
    expires = T0 + timedelta(minutes=5)
    with ThreadPoolExecutor(max_workers=16) as pool:
        same = list(pool.map(lambda _: store.remember_jti("ehr|raced", expires), range(64)))
        distinct = list(pool.map(lambda n: store.remember_jti(f"ehr|{n}", expires), range(64)))
    assert same.count(True) == 1
    assert distinct == [True] * 64
    assert remembered(store) == 65
