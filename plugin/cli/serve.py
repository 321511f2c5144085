"""`mkopper-cds serve`: run the service under gunicorn (or Flask's server with --dev).

The app is built once in the gunicorn master (``preload_app``) and the workers
are forked from it: start-up work (settings, migrations, the guideline content)
happens once, the workers share those pages until they write to them, and a
broken setting stops the service before any worker starts.

Worker type and count were chosen by measurement on a 2-core machine; the
numbers are in docs/operations.md. SIGTERM is a graceful shutdown: gunicorn
stops accepting, lets each worker finish the calls it has (up to
``GRACEFUL_TIMEOUT_S``) and then exits.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cds_hooks.fhir import warm_up
from plugin.api import metrics
from plugin.config import as_int, data_dir, database_url, load_settings

WORKER_CLASSES = ("gthread", "balanced", "sync")
DEFAULT_WORKER_CLASS = "balanced"
# "balanced" (the default): gunicorn's gthread worker taking a new connection only while it
# holds no more than the others, and answering the next request on a kept-alive connection on
# the same thread (plugin.cli.balanced). "gthread" is gunicorn's own.
_GUNICORN_CLASS = {"balanced": "plugin.cli.balanced.BalancedThreadWorker"}
# Threads per gthread worker. Gunicorn parks a connection that has sent nothing in its
# poller, but a client sending its headers slowly holds a thread until they are complete,
# and so does a call waiting on a slow FHIR server. Idle threads cost little (the pool
# starts them on demand); 256 per worker keeps /healthz and discovery answering with 200
# slow clients open against one worker (measured in docs/operations.md).
DEFAULT_THREADS = 256
# One header line may hold a bearer token up to the app's own limit (16 KB,
# plugin/security/auth.py MAX_TOKEN_CHARS) plus its name: the app answers such a token
# itself, in JSON. Gunicorn answers a line over this limit, also in JSON (_write_json_error).
LIMIT_REQUEST_FIELD_SIZE = 32 * 1024
# A CDS call is answered in milliseconds; a call still running after this long at
# shutdown is one the EHR has already given up on.
GRACEFUL_TIMEOUT_S = 20


def register(subparsers: Any) -> None:
    add_arguments(subparsers.add_parser("serve", help="run the CDS service"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="bind address (default CDS_HOST)")
    parser.add_argument("--port", type=int, default=None, help="port (default CDS_PORT)")
    parser.add_argument("--workers", type=int, default=None, help="workers (default CDS_WORKERS)")
    parser.add_argument(
        "--worker-class",
        choices=WORKER_CLASSES,
        default=DEFAULT_WORKER_CLASS,
        help=f"gunicorn worker type (default {DEFAULT_WORKER_CLASS}; see docs/operations.md)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"threads per balanced or gthread worker (default {DEFAULT_THREADS})",
    )
    parser.add_argument(
        "--dev",
        action="store_true",
        help="Flask's development server (single process, reloads nothing)",
    )
    parser.set_defaults(func=run)


def gunicorn_options(
    host: str,
    port: int,
    workers: int,
    worker_class: str = DEFAULT_WORKER_CLASS,
    threads: int = DEFAULT_THREADS,
) -> dict[str, Any]:
    """The gunicorn configuration, shared with the benchmark's reference app."""
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": _GUNICORN_CLASS.get(worker_class, worker_class),
        "threads": threads if worker_class != "sync" else 1,
        "preload_app": True,
        "graceful_timeout": GRACEFUL_TIMEOUT_S,
        "timeout": 30,
        "keepalive": 5,
        # The app writes one JSON line per call; gunicorn's access log would repeat it.
        "accesslog": None,
        "limit_request_field_size": LIMIT_REQUEST_FIELD_SIZE,
        # Gunicorn's largest (its default is 4094); over it, 414 in JSON.
        "limit_request_line": 8190,
        "logger_class": redacting_logger_class,
        "pre_fork": _pre_fork,
        "post_fork": _post_fork,
        "child_exit": _child_exit,
    }


# The error a server-level refusal answers with, in the service's one JSON shape. Gunicorn's
# own message is never sent: it may repeat the request line, and with it a query string.
_SERVER_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid-request", "The request is not valid HTTP."),
    403: ("forbidden", "The request is not allowed."),
    414: ("uri-too-long", "The request line is too long."),
    417: ("expectation-failed", "The Expect header is not supported."),
    431: ("header-too-large", "A request header or the header block is too large."),
    500: ("internal-error", "The service could not handle the request."),
    501: ("not-implemented", "The transfer coding is not supported."),
}


def _write_json_error(sock: Any, status_int: int, reason: str, _mesg: str) -> None:
    """Gunicorn's ``util.write_error``, answering JSON instead of HTML."""
    from gunicorn import util

    code, message = _SERVER_ERRORS.get(status_int, ("http-error", reason))
    body = json.dumps({"error": {"status": status_int, "code": code, "message": message}})
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        "Content-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, (head + body).encode("latin-1"))


_QUERY = re.compile(r"\?[^\s'\"]*")


def redact(text: str) -> str:
    """``text`` with every query string cut to ``?…``: a query can name a patient."""
    return _QUERY.sub("?…", text)


class RedactingFilter(logging.Filter):
    """Cuts query strings from gunicorn's own lines ("Invalid request from ...: <request
    line>", "Error handling request GET <uri>", the access log if an operator enables it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def redacting_logger_class() -> type:
    """Gunicorn's logger with ``RedactingFilter`` (gunicorn calls a function given as
    ``logger_class`` for the class, so gunicorn is imported only when it runs)."""
    from gunicorn.glogging import Logger

    class Redacting(Logger):  # type: ignore[misc]
        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            for logger in (self.error_log, self.access_log):
                if not any(isinstance(f, RedactingFilter) for f in logger.filters):
                    logger.addFilter(RedactingFilter())

    return Redacting


def _post_fork(_server: Any, worker: Any) -> None:
    from gunicorn import util

    # Server-level refusals (header too large, bad request line) in the one JSON shape.
    util.write_error = _write_json_error
    # Connections opened in the master before the fork must not be shared by workers.
    store = worker.app.callable.extensions.get("cds_store")
    if store is not None:
        store.engine.dispose(close=False)


def _pre_fork(server: Any, worker: Any) -> None:
    if server.cfg.worker_class_str == _GUNICORN_CLASS["balanced"]:
        from plugin.cli import balanced

        balanced.pre_fork(server, worker)


def _child_exit(server: Any, worker: Any) -> None:
    metrics.mark_worker_dead(worker.pid)
    if server.cfg.worker_class_str == _GUNICORN_CLASS["balanced"]:
        from plugin.cli import balanced

        balanced.child_exit(server, worker)  # a no-op until pre_fork made the table


def run_gunicorn(load: Callable[[], Any], options: dict[str, Any]) -> None:
    """Serve the WSGI app returned by ``load`` under gunicorn with ``options``."""
    from gunicorn.app.base import BaseApplication

    class Application(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return load()

    os.environ.setdefault("SERVER_SOFTWARE", "gunicorn")
    Application().run()


# glibc gives each thread that allocates its own malloc arena (up to 8 per core), and memory
# freed in one stays there: a worker whose threads each read a large record once keeps the
# peak of every thread. Two arenas keep a worker near one call's peak (docs/operations.md:
# worker RSS after the large record, 181 MB with glibc's default, 150 MB with two).
MALLOC_ARENAS = 2
# A large call's body is copied a few times on its way in (about 4 MB for 900 kB). With glibc's
# defaults those copies are handed back to the kernel after each call and taken again, page by
# page, by the next: about 900 page faults and 2 ms of system time per large call. Kept within
# the process instead, up to these sizes.
MALLOC_MMAP_THRESHOLD = 4 * 1024 * 1024
MALLOC_TRIM_THRESHOLD = 8 * 1024 * 1024
# mallopt's parameter numbers in glibc's malloc.h, each with the variable by which an operator
# sets it instead (glibc reads those itself).
_MALLOPT = (
    (-8, MALLOC_ARENAS, "MALLOC_ARENA_MAX"),  # M_ARENA_MAX
    (-3, MALLOC_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_"),  # M_MMAP_THRESHOLD
    (-1, MALLOC_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_"),  # M_TRIM_THRESHOLD
)


def tune_malloc() -> list[str]:
    """Cap glibc's malloc arenas at :data:`MALLOC_ARENAS` and keep a large call's memory for the
    next (:data:`MALLOC_MMAP_THRESHOLD`, :data:`MALLOC_TRIM_THRESHOLD`), except what the operator
    set in the environment. Returns the variables set here; none where there is no glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return []
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return []  # not glibc (musl has no mallopt)
    return [
        variable
        for parameter, value, variable in _MALLOPT
        if variable not in os.environ and mallopt(parameter, value)
    ]


def migrate_in_child(url: str) -> int:
    """Upgrade the database in a forked child and wait for it: the migration tool (alembic,
    about 11 MB) is then never loaded in the process the workers are forked from. Returns the
    child's exit status (0: done; 1: it failed and logged why)."""
    pid = os.fork()
    if pid == 0:  # the child: migrate, then leave without running the parent's clean-up
        status = 1
        try:
            from plugin.storage.store import migrate

            migrate(url)
            status = 0
        except Exception:  # any failure stops the start, with its reason
            logging.getLogger(__name__).exception("the database migration failed")
        finally:
            logging.shutdown()
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status)


def run(args: argparse.Namespace) -> int:
    from plugin import create_app

    settings = load_settings()
    host = args.host or str(settings["CDS_HOST"])
    port = args.port or as_int("CDS_PORT", settings["CDS_PORT"])
    workers = args.workers or as_int("CDS_WORKERS", settings["CDS_WORKERS"])
    logging.basicConfig(
        level=str(settings["CDS_LOG_LEVEL"]).upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if migrate_in_child(database_url(settings)) != 0:
        return 1
    if not args.dev:
        # Before the app (and its metrics) exist: the workers count into files here, one
        # directory per port so two instances sharing a data directory keep apart.
        metrics.enable_multiprocess(Path(data_dir(settings)) / f"prometheus-{port}")
    app = create_app({"CDS_SKIP_MIGRATE": True})
    warm_up()
    if args.dev:
        app.run(host=host, port=port, debug=False, use_reloader=False)
        return 0
    # Everything built so far (settings, content, value sets, models) lives as long as the
    # process: keep it out of the garbage collector's scans, and so out of the pages each
    # worker would otherwise copy when the collector touches it after the fork.
    gc.collect()
    gc.freeze()
    tune_malloc()
    run_gunicorn(
        lambda: app, gunicorn_options(host, port, workers, args.worker_class, args.threads)
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m plugin.cli.serve``: ``mkopper-cds serve`` without the other commands."""
    parser = argparse.ArgumentParser(
        prog="python -m plugin.cli.serve", description="Run the service."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
