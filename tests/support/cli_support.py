"""Helpers for the command-line tests: a service on a thread, and running a command in-process."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import WSGIRequestHandler, make_server

from plugin.cli.main import main


class QuietHandler(WSGIRequestHandler):
    def log(self, *_: Any) -> None:  # werkzeug's access lines would clutter test output
        pass


@contextmanager
def serving(app: Flask) -> Iterator[str]:
    """Serve ``app`` on a free loopback port on a thread; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def run_command(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``mkopper-cds ARGV`` in this process: exit code, stdout, stderr."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_trust(directory: Path, entries: Sequence[dict[str, Any]]) -> Path:
    """A CDS_TRUSTED_CLIENTS file holding ``entries`` as printed by ``call --print-trust``."""
    path = directory / "trusted-clients.json"
    path.write_text(json.dumps({"clients": list(entries)}), encoding="utf-8")
    return path
