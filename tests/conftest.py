"""Shared fixtures: a fresh app per test on its own SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from plugin import create_app
from tests.support.clock import Clock

INJECTED = {"CDS_REGISTRY": "registry", "CDS_SUPPRESSION_POLICY": "policy", "CDS_CLOCK": "clock"}


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Any]:
    """Build apps over one data directory (so two apps can share one database)."""
    apps: list[Flask] = []

    def factory(**overrides: Any) -> Flask:
        """Settings as keywords; ``CDS_REGISTRY``, ``CDS_SUPPRESSION_POLICY`` and ``CDS_CLOCK``
        are handed to ``create_app`` as its ``registry``, ``policy`` and ``clock``. Without
        ``CDS_CLOCK`` the app reads the fixed test clock (``tests.support.clock.START``), never
        the real one."""
        given = {name: overrides.pop(key, None) for key, name in INJECTED.items()}
        # Time comes from the injected clock: the fixed test clock unless a test gives its own.
        given["clock"] = given["clock"] or Clock()
        parts = {name: value for name, value in given.items() if value is not None}
        config: dict[str, Any] = {"CDS_DATA_DIR": str(tmp_path), "CDS_ALLOW_UNSIGNED": "1"}
        config.update(overrides)
        app = create_app(config, **parts)
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions["cds_store"].engine.dispose()
        app.extensions["cds_fhir"].client.close()


@pytest.fixture
def app(make_app: Any) -> Flask:
    application: Flask = make_app()
    return application


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
