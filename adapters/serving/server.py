"""Running the app: loading the guard the CLI names, uvicorn in the foreground, or in a background thread.

:class:`BackgroundServer` serves an app on 127.0.0.1 on a free port in a thread of the calling process (for
tests, benchmarks and notebooks); :func:`run_server` is what ``psaguard serve`` runs.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
from fastapi import FastAPI

from psaguard.dtypes import DtypeRequest
from psaguard.guard import SafetyGuard

__all__ = ["LIMIT_CONCURRENCY", "BackgroundServer", "load_guard", "run_server"]

logger = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S = 30.0
"""How long a stopping server waits for requests in flight before it closes their connections."""

KEEP_ALIVE_S = 75.0
"""Idle keep-alive connections close after this (uvicorn's default, 5 s, dropped connections of clients
waiting on a loaded server in the batching benchmark; 75 s is nginx's default)."""


LIMIT_CONCURRENCY = 512
"""Connections (and requests) uvicorn serves at once before it answers new ones 503 and closes them: a bound on
the file descriptors slow clients can hold, to keep below ``ulimit -n`` (docs/serving.md, 'Connection limits')."""


def load_guard(
    guard_dir: str | Path,
    model: str | Path,
    *,
    classifier_only: bool,
    device: str | None = None,
    dtype: DtypeRequest = None,
) -> SafetyGuard:
    """The guard in ``guard_dir`` on the base model ``model`` (its vision tower and embeddings only when
    ``classifier_only``, for proxy mode), on ``device`` (default: CPU), computing in ``dtype`` (default: what
    the device runs fast, :func:`psaguard.dtypes.choose_dtype`)."""
    guard = SafetyGuard.load(guard_dir, model, classifier_only=classifier_only, device=device, dtype=dtype)
    logger.info("loaded %r", guard)  # the repr names the dtypes the guard computes in
    return guard


def run_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, **uvicorn_kwargs: Any) -> None:
    """Serve ``app`` until SIGINT/SIGTERM; stopping lets requests in flight finish (up to 30 s). At most
    :data:`LIMIT_CONCURRENCY` connections at once unless ``limit_concurrency`` says otherwise."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s: reachable from other machines; set API keys (see docs/serving.md)", host)
    options = {
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        "timeout_keep_alive": KEEP_ALIVE_S,
        "limit_concurrency": LIMIT_CONCURRENCY,
        **uvicorn_kwargs,
    }
    uvicorn.run(app, host=host, port=port, **options)


class BackgroundServer:
    """``with BackgroundServer(app) as server:`` serves ``app`` at ``server.base_url`` (127.0.0.1, a free port)
    in a daemon thread; leaving the block shuts it down gracefully and waits for the thread. Other keyword
    arguments go to ``uvicorn.Config``."""

    def __init__(
        self, app: FastAPI, *, startup_timeout_s: float = 30.0, log_level: str = "warning", **uvicorn_options: Any
    ) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        options = {
            "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
            "timeout_keep_alive": KEEP_ALIVE_S,
            "access_log": False,
            **uvicorn_options,
        }
        config = uvicorn.Config(app, log_level=log_level, lifespan="on", **options)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name=f"psaguard-serve-{self.port}", daemon=True)
        self._startup_timeout_s = startup_timeout_s

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, e.g. http://127.0.0.1:PORT/v1."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        self.server.run(sockets=[self._socket])

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the psaguard server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = GRACEFUL_SHUTDOWN_S + 5.0) -> None:
        """Ask for a graceful shutdown (requests in flight finish) and wait for the server thread."""
        self.server.should_exit = True
        self._thread.join(timeout_s)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
