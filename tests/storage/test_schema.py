"""One schema: the models in plugin/storage/schema.py and what the migrations build agree."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from plugin.storage.schema import metadata
from plugin.storage.store import create_db_engine, migrate
from tests.support.service_process import fresh_schema, postgres_url

EVERY_TABLE = {
    "issued_cards",
    "feedback",
    "jwt_replay",
    "card_subjects",
    "suppressions",
    "smart_sessions",
}


def differences(url: str) -> list[object]:
    migrate(url)
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn), metadata))
    finally:
        engine.dispose()


def test_every_table_is_on_the_one_metadata() -> None:
    assert set(metadata.tables) == EVERY_TABLE


def test_migrations_build_the_models_on_sqlite(tmp_path: Path) -> None:
    assert differences(f"sqlite:///{tmp_path / 'schema.sqlite3'}") == []


def test_a_model_change_without_a_migration_is_found(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'schema.sqlite3'}"
    migrate(url)
    changed = sa.MetaData()
    for table in metadata.tables.values():
        table.to_metadata(changed)
    sa.Table("issued_cards", changed, sa.Column("extra", sa.Integer), extend_existing=True)
    engine = create_db_engine(url)
    with engine.connect() as conn:
        found = compare_metadata(MigrationContext.configure(conn), changed)
    engine.dispose()
    assert [diff[0] for diff in found] == ["add_column"]


@pytest.mark.postgres
def test_migrations_build_the_models_on_postgresql() -> None:
    with fresh_schema(postgres_url()) as url:
        assert differences(url) == []
