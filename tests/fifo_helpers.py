"""Checking that a reader refuses a FIFO instead of blocking on it forever."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest


def error_without_blocking(read: Callable[[], object], fifo: Path, error: type[Exception]) -> Exception:
    """Run ``read`` (which must raise ``error``) in a thread; fail the test if it blocks on ``fifo``."""
    raised: list[Exception] = []

    def target() -> None:
        try:
            read()
        except error as err:
            raised.append(err)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():  # open the FIFO's other end so the blocked reader can return
        with open(fifo, "wb"):
            pass
        pytest.fail(f"reading the FIFO {fifo.name} blocked")
    assert raised, f"reading the FIFO {fifo.name} did not raise {error.__name__}"
    return raised[0]
