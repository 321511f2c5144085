"""`mkopper-cds check-content [PATH]`: validate a guideline content file without serving."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cds_hooks.errors import ContentError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check-content", help="validate a guideline content file (TOML) and exit"
    )
    parser.add_argument(
        "path",
        nargs="?",
        default=None,
        help="content file (default: CDS_CONTENT_FILE or the shipped content)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from cds_hooks.catalog import check_content

    path = args.path or os.environ.get("CDS_CONTENT_FILE") or None
    try:
        summary = check_content(path)
    except ContentError as exc:
        print(f"content invalid: {exc.message}", file=sys.stderr)
        return 1
    print(summary)
    return 0
