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


def test_upgrade_to_caller_scope_keeps_one_feedback_per_card_and_drops_unscoped_records(
    tmp_path: Path,
) -> None:
    from alembic import command
    from alembic.config import Config

    import plugin.storage.store as store_module

    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    config = Config()
    config.set_main_option(
        "script_location", str(Path(store_module.__file__).parent / "migrations")
    )
    config.set_main_option("sqlalchemy.url", url)
    config.attributes["configure_logger"] = False
    command.upgrade(config, "0003")
    engine = create_db_engine(url)
    row = "('c1', 'svc', 1, 'accepted', '2026-11-25T10:15:00Z', '2026-11-25 10:15:00')"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO feedback (card_uuid, service_id, known_card, outcome, outcome_time,"
                f" received_at) VALUES {row}, {row}"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO suppressions (patient_hash, encounter_hash, kind, reason,"
                " created_at, expires_at) VALUES ('p', '', 'k', 'r', '2026-11-25', '2027-01-01')"
            )
        )
    migrate(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM feedback")).scalar_one() == 1
        assert conn.execute(sa.text("SELECT COUNT(*) FROM suppressions")).scalar_one() == 0
    engine.dispose()
