"""Shared by the SMART tests: a SMART EHR (authorisation server) on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
