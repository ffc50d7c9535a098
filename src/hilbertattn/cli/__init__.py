"""The ``hilbertattn`` command: ``show``, ``plan``, ``bench`` and ``train`` subcommands.

Each subcommand lives in its own module with ``add_parser(subparsers)`` (which registers it and
sets ``func``) so that importing one never pulls in another's heavy dependencies.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = ("show", "plan", "bench", "train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hilbertattn", description="Hilbert-curve local attention: pictures, plans, "
        "benchmarks and training.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"hilbertattn.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return int(args.func(args) or 0)
