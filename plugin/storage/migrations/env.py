"""Alembic environment: runs migrations on the connection given by plugin.storage.store.migrate."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from plugin.storage.schema import metadata
from plugin.storage.store import create_db_engine

config = context.config


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url
    engine = create_db_engine(url)
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # Several instances may start at once: one migrates, the others wait.
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(7216300001)"))
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    engine.dispose()


run_migrations_online()
