"""The benchmark's reference: a bare Flask JSON POST under the service's gunicorn configuration.

It parses the JSON body and answers a small JSON object, nothing else, so the
ratio service/reference shows what the service's own work costs on top of
Flask, gunicorn and the HTTP stack on the same machine in the same run.

    python bench/reference_app.py --port 8090 --workers 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from plugin.cli import balanced
from plugin.cli.serve import (
    DEFAULT_THREADS,
    DEFAULT_WORKER_CLASS,
    WORKER_CLASSES,
    gunicorn_options,
    run_gunicorn,
)


def create_reference_app() -> Flask:
    app = Flask(__name__)

    @app.post("/cds-services/<service_id>")
    def echo(service_id: str) -> Response:
        body: Any = request.get_json(force=True, silent=True)
        size = len(body) if isinstance(body, dict) else 0
        return jsonify({"cards": [], "service": service_id, "keys": size})

    @app.get("/readyz")
    def readyz() -> Response:
        return jsonify({"status": "ready"})

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-class", choices=WORKER_CLASSES, default=DEFAULT_WORKER_CLASS)
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    args = parser.parse_args()
    app = create_reference_app()
    options = gunicorn_options(args.host, args.port, args.workers, args.worker_class, args.threads)
    # The reference has no database and no metrics: keep only the plain settings, and the
    # balanced workers' table of connections.
    options.pop("post_fork")
    if args.worker_class == "balanced":
        options["child_exit"] = balanced.child_exit
    else:
        options.pop("child_exit")
    run_gunicorn(lambda: app, options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
