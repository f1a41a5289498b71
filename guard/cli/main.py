"""The ``psaguard`` command line: ``demo``, ``classify``, and the subcommands of installed extensions."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from psaguard.cli.extras import install_hint
from psaguard.cli.logs import logging_for_command
from psaguard.dtypes import add_dtype_option
from psaguard.errors import PsaGuardError

if TYPE_CHECKING:
    from psaguard.guard import SafetyGuard

__all__ = ["add_guard_arguments", "build_parser", "load_guard", "main"]

# Modules that may add subcommands through `register(subparsers)`; skipped when not importable
# (e.g. the training extra is not installed).
_EXTENSIONS = (
    "psaguard.training.cli",
    "psaguard.training.category_cli",
    "psaguard.training.datasets.cli",
    "psaguard.training.world.cli",
    "psaguard.serving.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(prog="psaguard", description="PSA-VLM safety guardrails for LLaVA models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    subparsers = parser.add_subparsers(dest="command", required=True)

    demo = subparsers.add_parser(
        "demo", help="judge and answer the shipped example requests with the tiny trained demo model and guard"
    )
    demo.set_defaults(func=_run_demo)

    classify = subparsers.add_parser("classify", help="judge one (image, prompt) request; prints JSON")
    add_guard_arguments(classify)
    classify.add_argument("image", help="image file")
    classify.add_argument("prompt", help="the user's prompt")
    classify.set_defaults(func=_run_classify)

    for name in _EXTENSIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            logging.getLogger(__name__).debug("subcommands of %s unavailable: %s", name, err)
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for a psaguard error or a missing extra)."""
    args = build_parser().parse_args(argv)
    level = getattr(args, "log_level", None) or ("INFO" if args.verbose else "WARNING")
    try:
        with logging_for_command(level):
            return int(args.func(args) or 0)
    except PsaGuardError as err:
        print(f"psaguard: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        hint = install_hint(err)
        if hint is None:
            raise
        print(f"psaguard: error: {hint}", file=sys.stderr)
        return 2


def _run_demo(args: argparse.Namespace) -> int:
    from psaguard.cli.demo import run_demo

    run_demo()
    return 0


def _run_classify(args: argparse.Namespace) -> int:
    guard = load_guard(args.guard, args.model, classifier_only=args.classifier_only, dtype=args.dtype)
    print(guard.classify(args.image, args.prompt).model_dump_json(indent=2))
    return 0


def add_guard_arguments(parser: argparse.ArgumentParser) -> None:
    """``--guard``, ``--model``, ``--classifier-only`` and ``--dtype``: what :func:`load_guard` reads."""
    parser.add_argument("--guard", required=True, help="saved guard directory (or hub id)")
    parser.add_argument("--model", required=True, help="base model directory (or hub id)")
    parser.add_argument(
        "--classifier-only",
        action="store_true",
        help="read only the vision tower and token embeddings of --model (safetensors), not its language model",
    )
    add_dtype_option(parser)


def load_guard(guard: str, model: str, *, classifier_only: bool = False, dtype: str | None = None) -> SafetyGuard:
    """:meth:`SafetyGuard.load` for the command line (imported when a command runs, to start fast)."""
    from psaguard.guard import SafetyGuard

    return SafetyGuard.load(guard, model, classifier_only=classifier_only, dtype=dtype)
