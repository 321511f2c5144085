"""`mkopper-cds purge-suppressions`: delete expired records (for a cron job).

Expired suppressions, and feedback and the daily counts of cards shown older than
``CDS_FEEDBACK_RETENTION_DAYS``. The service deletes them on its next write anyway; this is for
a quiet service, so that hashed patient records and comments do not outlive their time by long.
(Issued cards are not stored: a card's uuid carries its record and stops opening after
seven days, whatever is purged.)
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from typing import Any

from cds_hooks.errors import StorageError
from plugin.config import database_url, load_settings
from plugin.storage.store import Clock, Store, create_db_engine, migrate, utcnow
from plugin.storage.suppression import Policy, Suppressions, hasher_from_settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "purge-suppressions",
        help="delete expired suppressions, and feedback and card counts past retention; exit",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, clock: Clock = utcnow) -> int:
    settings = load_settings()
    url = database_url(settings)
    migrate(url)
    engine = create_db_engine(url)
    try:
        # Purging needs no policy: only expiry times are read.
        suppressions = Suppressions(
            engine, hasher_from_settings(settings), Policy(reason_hours={}), clock=clock
        )
        deleted = suppressions.purge()
        retention = timedelta(days=settings["CDS_FEEDBACK_RETENTION_DAYS"])
        deleted += Store(engine, clock, retention=retention).purge()
    except StorageError as exc:
        print(f"purge failed: {exc.message}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"deleted {deleted} expired record(s)")
    return 0
