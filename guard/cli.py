"""The ``psaguard`` command line: a parser with subcommands, some registered by optional packages.

Minimal placeholder with the agreed contract (the lead's full CLI replaces it): optional packages such
as :mod:`psaguard.training.cli` expose ``register(subparsers)`` and set ``func(args) -> int`` per subcommand.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

_PLUGINS = ("psaguard.training.cli",)


def build_parser() -> argparse.ArgumentParser:
    """The ``psaguard`` parser with every importable plugin's subcommands."""
    parser = argparse.ArgumentParser(prog="psaguard", description="PSA-VLM safety guardrails.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in _PLUGINS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
