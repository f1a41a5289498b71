"""Logging of the ``psaguard`` command: configured once, by the command, never by the library.

Library modules only call ``logging.getLogger(__name__)``. The command sets one handler on the root logger
(the subcommand's ``--log-level``, INFO for training; otherwise WARNING, INFO with ``-v``) and writes log
records around tqdm's progress bars, so that a bar and the periodic step lines never interleave.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.contrib.logging import logging_redirect_tqdm

__all__ = ["LOG_FORMAT", "LOG_LEVELS", "add_log_level_option", "logging_for_command"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_log_level_option(parser: argparse.ArgumentParser, default: str = "INFO") -> None:
    """Give a subcommand its own ``--log-level`` (long runs log their progress at INFO by default)."""
    parser.add_argument("--log-level", default=default, choices=LOG_LEVELS, help=f"log level (default {default})")


@contextmanager
def logging_for_command(level: str) -> Iterator[None]:
    """Configure the root logger once for one command run and route its records through ``tqdm.write``."""
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    previous = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        with logging_redirect_tqdm(loggers=[root]):
            yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
