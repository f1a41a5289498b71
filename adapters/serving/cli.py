"""``psaguard serve``: the OpenAI-compatible moderation and guarded chat server (``pip install 'psaguard[serve]'``).

Found by :mod:`psaguard.cli` through ``register(subparsers)``; the server's dependencies load only when the
command runs, so ``psaguard --help`` works without the ``serve`` extra.
"""

from __future__ import annotations

import argparse
import os
from importlib import resources

from psaguard.cli.demo import DEMO_ASSETS
from psaguard.cli.extras import require_extra
from psaguard.dtypes import add_dtype_option
from psaguard.errors import ConfigError

__all__ = ["UPSTREAM_API_KEY_ENV", "register"]

UPSTREAM_API_KEY_ENV = "PSAGUARD_UPSTREAM_API_KEY"
"""Environment variable holding the bearer key proxy mode sends upstream."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` subcommand."""
    serve = subparsers.add_parser(
        "serve", help="serve /v1/moderations and guarded /v1/chat/completions (OpenAI-compatible)"
    )
    serve.add_argument("--demo", action="store_true", help="serve the shipped demo guard and tiny model")
    serve.add_argument("--guard", help="saved guard directory (or hub id)")
    serve.add_argument("--model", help="base model directory (or hub id): local mode, the server generates")
    serve.add_argument("--classifier-only", action="store_true", help="load only the classifier parts of --base")
    serve.add_argument("--base", help="base model checkpoint for --classifier-only (directory or hub id)")
    serve.add_argument("--upstream", help="proxy mode: base URL of the upstream OpenAI-compatible API (…/v1)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--api-key-file", help="file of accepted bearer keys, one a line (also: $PSAGUARD_API_KEYS)")
    serve.add_argument("--max-batch", type=int, default=16, help="most requests judged in one forward pass (1: off)")
    serve.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a request waits for batch-mates")
    serve.add_argument("--model-name", default="psaguard", help="model name in responses when a request names none")
    serve.add_argument(
        "--on-text-only", choices=("allow", "refuse", "block"), default="allow", help="requests without an image"
    )
    serve.add_argument(
        "--no-answer-checks",
        action="store_true",
        help="serve answers unjudged (fail open; needed for a guard without a response head, e.g. an older one)",
    )
    serve.add_argument(
        "--allow-image-url", action="append", default=[], metavar="PREFIX", help="remote image URL prefix to fetch"
    )
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN", help="allow CORS from ORIGIN")
    serve.add_argument("--request-timeout", type=float, default=60.0, help="seconds to judge (and answer) a request")
    serve.add_argument("--max-body-bytes", type=int, default=20 * 1024 * 1024, help="largest request body")
    serve.add_argument(
        "--max-images",
        type=int,
        default=None,
        help="most images in one request (default: psaguard.images.MAX_IMAGES_PER_REQUEST)",
    )
    serve.add_argument(
        "--max-pixels-in-flight",
        type=int,
        default=None,
        help="image pixels held at once before new requests get 503 (default: twice the guard's image limit)",
    )
    serve.add_argument(
        "--limit-concurrency", type=int, default=512, help="connections served at once (keep below ulimit -n)"
    )
    add_dtype_option(serve)
    serve.set_defaults(func=_run_serve)


def _paths(args: argparse.Namespace) -> tuple[str, str, bool]:
    """(guard, model, classifier_only) from the arguments, or a ConfigError naming what is missing."""
    if args.demo:
        if args.guard or args.model or args.base:
            raise ConfigError("--demo serves the shipped demo; do not combine it with --guard/--model/--base")
        root = resources.files("psaguard") / DEMO_ASSETS
        return str(root / "guard"), str(root / "model"), args.classifier_only
    if not args.guard:
        raise ConfigError("serve needs --guard DIR (or --demo)")
    if args.classifier_only:
        if not args.base or args.model:
            raise ConfigError("--classifier-only takes the base checkpoint as --base (not --model)")
        return args.guard, args.base, True
    if not args.model:
        raise ConfigError("serve needs --model DIR, or --classifier-only --base DIR_OR_ID")
    return args.guard, args.model, False


def _run_serve(args: argparse.Namespace) -> int:
    require_extra("serve")  # a missing fastapi/uvicorn is a one-line install hint, before any model loads
    from pydantic import ValidationError

    from psaguard.serving.app import create_app
    from psaguard.serving.auth import load_api_keys
    from psaguard.serving.config import BatchingConfig, LimitsConfig, ServeConfig
    from psaguard.serving.server import load_guard, run_server

    guard_dir, model, classifier_only = _paths(args)
    try:
        config = ServeConfig(
            mode="proxy" if args.upstream else "local",
            upstream=args.upstream,
            upstream_api_key=os.environ.get(UPSTREAM_API_KEY_ENV) or None,
            model_name=args.model_name,
            on_text_only=args.on_text_only,
            check_answers=not args.no_answer_checks,
            image_url_allowlist=tuple(args.allow_image_url),
            cors_origins=tuple(args.cors_origin),
            batching=BatchingConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms),
            limits=LimitsConfig(
                request_timeout_s=args.request_timeout,
                max_body_bytes=args.max_body_bytes,
                **({} if args.max_images is None else {"max_images": args.max_images}),
                max_pixels_in_flight=args.max_pixels_in_flight,
            ),
        )
    except ValidationError as err:
        raise ConfigError(f"invalid serve option: {err}") from err
    keys = load_api_keys(args.api_key_file)
    guard = load_guard(guard_dir, model, classifier_only=classifier_only, dtype=args.dtype)
    app = create_app(guard, config, api_keys=keys)
    run_server(app, host=args.host, port=args.port, limit_concurrency=args.limit_concurrency)
    return 0
