"""Shared by the SMART tests: a SMART EHR (authorisation server) on loopback, and the app
that trusts it on a clock the test moves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from tests.support.clock import Clock
from tests.support.fake_services import fake_registry
from tests.support.smart_auth_server import CALLBACK, UNUSED_UPSTREAM, SmartEhr


@pytest.fixture
def ehr() -> Iterator[SmartEhr]:
    """An EHR with the service registered as client ``mkopper-cds``; no FHIR upstream."""
    server = SmartEhr(UNUSED_UPSTREAM).start()
    server.register_client("mkopper-cds", CALLBACK)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def clocked_smart_app(make_app: Any, ehr: SmartEhr, clock: Clock) -> Flask:
    """The app with ``ehr``'s FHIR base allowed, reading ``clock``."""
    app: Flask = make_app(
        CDS_REGISTRY=fake_registry(), CDS_ALLOWED_FHIR_SERVERS=ehr.fhir_base, CDS_CLOCK=clock
    )
    return app
