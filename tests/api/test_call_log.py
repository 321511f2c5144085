"""The one log line per call: its fields, and the text json.dumps gives them."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from tests.api.test_http_errors import request_body
from tests.support.fake_services import fake_registry

FIELDS = {"service", "hook", "hookInstance", "cards", "evaluated", "status", "ms"}
PHASES = {"auth", "parse", "prefetch", "rules", "storage", "cards"}


def logged_line(make_app: Any, caplog: pytest.LogCaptureFixture, **changes: Any) -> str:
    client = make_app(CDS_REGISTRY=fake_registry()).test_client()
    with caplog.at_level(logging.INFO, logger="plugin.calls"):
        response = client.post("/cds-services/test-view", json=request_body(**changes))
    assert response.status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "plugin.calls"]
    assert len(lines) == 1
    return lines[0]


@pytest.mark.parametrize(
    "hook_instance",
    [
        "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "tilfelle-ø-æ-å",  # not ASCII: escaped as json.dumps does
        'del-\x7f-and-tab-\t-quote-"-backslash-\\',
        "x" * 80,  # cut to 64 characters
    ],
)
def test_the_line_is_json_dumps_of_the_call_fields(
    make_app: Any, caplog: pytest.LogCaptureFixture, hook_instance: str
) -> None:
    line = logged_line(make_app, caplog, hookInstance=hook_instance)
    fields = json.loads(line)
    assert line == json.dumps(fields, separators=(",", ":"), sort_keys=True)
    assert set(fields) == FIELDS
    assert fields["hookInstance"] == hook_instance[:64]
    assert fields["status"] == 200
    assert set(fields["ms"]) == PHASES
    assert all(isinstance(ms, float) for ms in fields["ms"].values())


def test_no_line_is_built_when_info_is_off(make_app: Any, caplog: pytest.LogCaptureFixture) -> None:
    client = make_app(CDS_REGISTRY=fake_registry()).test_client()
    with caplog.at_level(logging.WARNING, logger="plugin.calls"):
        assert client.post("/cds-services/test-view", json=request_body()).status_code == 200
    assert not [r for r in caplog.records if r.name == "plugin.calls"]
