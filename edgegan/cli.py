"""``edgegan`` command line. Each subcommand lives in ``edgegan/commands/<name>.py`` with
``register(subparsers)``; bad input exits 2 with one line ``edgegan: error: <field>: ...``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from edgegan import __version__
from edgegan.errors import EdgeganError

# subcommand modules under edgegan/commands, in the order --help lists them
COMMANDS = ["train", "grid-barycenter", "cloud", "edge", "simulate", "scenarios"]


def add_device_option(p: argparse.ArgumentParser) -> None:
    """The device option every compute subcommand honours."""
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N or auto (CUDA when present) [default: auto]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgegan", description="Federated edge-cloud learning of generative models: "
        "W1/W2 barycenters of edge generators, ternary fast adaptation, TDGAN.")
    parser.add_argument("--version", action="version", version=f"edgegan {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"edgegan.commands.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except EdgeganError as e:
        print(f"edgegan: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
