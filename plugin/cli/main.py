"""The `mkopper-cds` command line: one module per sub-command, each a :class:`Command`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, Protocol

from plugin.cli import call, check_content, contract_doc, demo, purge, seed, serve
from plugin.version import CDS_HOOKS_VERSION, __version__


class Command(Protocol):
    """A sub-command module: ``register`` adds its parser and sets ``func`` (args -> exit code)."""

    def register(self, subparsers: Any) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


COMMANDS: tuple[Command, ...] = (serve, check_content, contract_doc, seed, call, demo, purge)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mkopper-cds",
        description="CDS Hooks service for Helse Bergen's m-kopper guideline.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {__version__} (CDS Hooks {CDS_HOOKS_VERSION})",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
