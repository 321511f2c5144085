"""One schema: the models in plugin/storage/schema.py and what the migrations build agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from plugin.storage.schema import metadata
from plugin.storage.store import create_db_engine, migrate
from tests.support.service_process import fresh_schema, postgres_url

EVERY_TABLE = {
    "feedback",
    "issued_counts",
    "jwt_replay",
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
    sa.Table("feedback", changed, sa.Column("extra", sa.Integer), extend_existing=True)
    engine = create_db_engine(url)
    with engine.connect() as conn:
        found = compare_metadata(MigrationContext.configure(conn), changed)
    engine.dispose()
    assert [diff[0] for diff in found] == ["add_column"]


@pytest.mark.postgres
def test_migrations_build_the_models_on_postgresql() -> None:
    with fresh_schema(postgres_url()) as url:
        assert differences(url) == []


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    import plugin.storage.store as store_module

    config = Config()
    config.set_main_option(
        "script_location", str(Path(store_module.__file__).parent / "migrations")
    )
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def upgrade_to(url: str, revision: str) -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade_to(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def test_upgrade_to_caller_scope_keeps_one_feedback_per_card_and_drops_unscoped_records(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    upgrade_to(url, "0003")
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


def _issued_before_tokens(url: str) -> None:
    """Issued cards, feedback and a suppression as revision 0004 kept them."""
    upgrade_to(url, "0004")
    engine = create_db_engine(url)
    issued = [
        ("c1", "notify-municipal-doctor", "notify-municipal-doctor", "2026-11-24 23:59:00"),
        ("c2", "notify-municipal-doctor", "notify-municipal-doctor", "2026-11-24 08:00:00"),
        ("c3", "isolation-inpatient", None, "2026-11-25 09:00:00"),
    ]
    with engine.begin() as conn:
        for card, finding, topic, at in issued:
            conn.execute(
                sa.text(
                    "INSERT INTO issued_cards (card_uuid, service_id, finding, topic,"
                    " hook_instance, issued_at) VALUES (:card, 'svc', :finding, :topic, 'h', :at)"
                ),
                {"card": card, "finding": finding, "topic": topic, "at": at},
            )
        conn.execute(
            sa.text(
                "INSERT INTO feedback (card_uuid, service_id, known_card, outcome, outcome_time,"
                " received_at) VALUES ('c3', 'svc', true, 'accepted', '2026-11-25T10:15:00Z',"
                " '2026-11-25 10:15:00')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO suppressions (patient_hash, encounter_hash, kind, reason,"
                " created_at, expires_at) VALUES ('p', '', 'k', 'r', '2026-11-25', '2027-01-01')"
            )
        )
    engine.dispose()


def _check_after_tokens(url: str) -> None:
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            counts = conn.execute(
                sa.text("SELECT day, finding, kind, count FROM issued_counts ORDER BY day, kind")
            ).all()
            kinds = conn.execute(sa.text("SELECT finding, kind FROM feedback")).all()
            kept = conn.execute(sa.text("SELECT COUNT(*) FROM suppressions")).scalar_one()
            tables = set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert [(str(day)[:10], finding, kind, n) for day, finding, kind, n in counts] == [
        ("2026-11-24", "notify-municipal-doctor", "notify-municipal-doctor", 2),
        ("2026-11-25", "isolation-inpatient", "isolation-inpatient", 1),
    ]
    assert [tuple(row) for row in kinds] == [("isolation-inpatient", "isolation-inpatient")]
    assert kept == 1  # active suppressions hold on
    assert not {"issued_cards", "card_subjects"} & tables


def test_upgrade_to_card_tokens_counts_issued_cards_and_keeps_feedback_kinds(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    _issued_before_tokens(url)
    migrate(url)
    _check_after_tokens(url)


@pytest.mark.postgres
def test_upgrade_to_card_tokens_on_postgresql() -> None:
    with fresh_schema(postgres_url()) as url:
        _issued_before_tokens(url)
        migrate(url)
        _check_after_tokens(url)
        # And back: the dropped tables come back empty, the counts go.
        downgrade_to(url, "0004")
        engine = create_db_engine(url)
        try:
            tables = set(sa.inspect(engine).get_table_names())
        finally:
            engine.dispose()
        assert {"issued_cards", "card_subjects"} <= tables
        assert "issued_counts" not in tables


def test_downgrade_from_card_tokens_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    _issued_before_tokens(url)
    migrate(url)
    downgrade_to(url, "0004")
    engine = create_db_engine(url)
    try:
        tables = set(sa.inspect(engine).get_table_names())
        columns = {column["name"] for column in sa.inspect(engine).get_columns("feedback")}
        with engine.connect() as conn:
            kept = conn.execute(sa.text("SELECT COUNT(*) FROM feedback")).scalar_one()
    finally:
        engine.dispose()
    assert {"issued_cards", "card_subjects"} <= tables
    assert "issued_counts" not in tables
    assert "kind" not in columns
    assert kept == 1
