"""The `mkopper-cds` command line. Each sub-command module offers ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that add sub-commands; each has register(subparsers) -> None and sets
# `func` (args -> exit code) on its parser.
COMMAND_MODULES: tuple[str, ...] = (
    "plugin.cli.serve",
    "plugin.cli.check_content",
    "plugin.cli.contract_doc",
    "plugin.cli.seed",
    "plugin.cli.call",
    "plugin.cli.purge",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mkopper-cds",
        description="CDS Hooks service for Helse Bergen's m-kopper guideline.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
