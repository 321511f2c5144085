"""`mkopper-cds serve`: run the service under gunicorn (or Flask's server with --dev)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from plugin.config import as_int, database_url, load_settings

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("serve", help="run the CDS service")
    parser.add_argument("--host", default=None, help="bind address (default CDS_HOST)")
    parser.add_argument("--port", type=int, default=None, help="port (default CDS_PORT)")
    parser.add_argument("--workers", type=int, default=None, help="workers (default CDS_WORKERS)")
    parser.add_argument(
        "--dev",
        action="store_true",
        help="Flask's development server (single process, reloads nothing)",
    )
    parser.set_defaults(func=run)


def gunicorn_options(host: str, port: int, workers: int) -> dict[str, Any]:
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": 4,
        "preload_app": True,
        "graceful_timeout": 20,
        "timeout": 30,
        "keepalive": 5,
        "accesslog": None,
        "post_fork": _post_fork,
    }


def _post_fork(_server: Any, worker: Any) -> None:
    # Connections opened in the master before the fork must not be shared by workers.
    app = worker.app.callable
    app.extensions["cds_store"].engine.dispose(close=False)


def run(args: argparse.Namespace) -> int:
    from plugin import create_app
    from plugin.storage import migrate

    settings = load_settings()
    host = args.host or str(settings["CDS_HOST"])
    port = args.port or as_int("CDS_PORT", settings["CDS_PORT"])
    workers = args.workers or as_int("CDS_WORKERS", settings["CDS_WORKERS"])
    logging.basicConfig(
        level=str(settings["CDS_LOG_LEVEL"]).upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    migrate(database_url(settings))
    app = create_app({"CDS_SKIP_MIGRATE": True})
    if args.dev:
        app.run(host=host, port=port, debug=False, use_reloader=False)
        return 0

    from gunicorn.app.base import BaseApplication

    class Application(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in gunicorn_options(host, port, workers).items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    os.environ.setdefault("SERVER_SOFTWARE", "gunicorn")
    Application().run()
    return 0
