"""Bounded reads of untrusted files: regular files only, size-capped, and strict JSON.

* Files are opened non-blocking and checked with ``fstat`` on the opened descriptor, so a FIFO, a device
  or a directory is refused at once instead of blocking forever (and a path swapped after a check cannot
  slip through).
* JSON is parsed strictly: a duplicate key is an error (``{"enabled": true, "enabled": false}`` would
  otherwise silently keep the last value), integers are bounded in length (Python refuses more than 4300
  digits with a bare ``ValueError``), and ``NaN`` / ``Infinity``, which are not JSON, are refused.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from psaguard.errors import PsaGuardError

__all__ = [
    "MAX_JSON_INT_DIGITS",
    "loads_strict_json",
    "open_regular_file",
    "parse_json",
    "read_json_file",
    "read_regular_file",
]

MAX_JSON_INT_DIGITS = 40
"""Longest integer literal accepted in JSON; every real value fits (a 128-bit integer has 39 digits)."""


class _StrictJsonError(ValueError):
    pass


def read_regular_file(path: str | Path, max_bytes: int | None, error: type[PsaGuardError], what: str) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (None: any size), else ``error`` naming ``what``.

    A missing file raises ``error`` chained to its ``FileNotFoundError``.
    """
    with open_regular_file(path, max_bytes, error, what) as handle:
        try:
            data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
        except OSError as err:
            raise error(f"cannot read {what} {path}: {err}") from err
    _check_size(len(data), max_bytes, error, f"{what} {path}")  # it may have grown since fstat
    return data


@contextmanager
def open_regular_file(
    path: str | Path, max_bytes: int | None, error: type[PsaGuardError], what: str
) -> Iterator[BinaryIO]:
    """A binary handle on a regular file of at most ``max_bytes`` (None: any size), else ``error`` naming ``what``.

    For readers that take a file object (``torch.load``): a FIFO, a device or a directory is refused at once,
    checked on the opened descriptor. The handle is closed when the block ends.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
        raise error(f"cannot open {what} {str(path)[:200]!r}: {err}") from err
    try:
        info = os.fstat(fd)  # of the opened file: no race with a path swapped after the check
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {path} is not a regular file")
        _check_size(info.st_size, max_bytes, error, f"{what} {path}")
        handle = os.fdopen(os.dup(fd), "rb")
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err}") from err
    finally:
        os.close(fd)
    with handle:
        yield handle


def _check_size(size: int, max_bytes: int | None, error: type[PsaGuardError], name: str) -> None:
    if max_bytes is not None and size > max_bytes:
        raise error(f"{name} of {size} bytes exceeds the limit of {max_bytes} bytes")


def loads_strict_json(text: str | bytes) -> Any:
    """``json.loads`` refusing duplicate keys, integers over :data:`MAX_JSON_INT_DIGITS` digits and NaN/inf.

    Raises ``ValueError`` (``json.JSONDecodeError`` for syntax) or ``RecursionError`` for JSON nested past
    the parser's stack; :func:`read_json_file` maps both to a typed error.
    """
    return json.loads(text, object_pairs_hook=_unique_keys, parse_int=_bounded_int, parse_constant=_no_constant)


def parse_json(data: bytes, error: type[PsaGuardError], what: str) -> Any:
    """Strictly parse UTF-8 JSON bytes (see :func:`loads_strict_json`); every failure is ``error``."""
    try:
        return loads_strict_json(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        # RecursionError: deeply nested JSON ("[[[[...") exhausts the parser's stack.
        raise error(f"cannot read {what}: {type(err).__name__}: {err}") from err


def read_json_file(path: str | Path, max_bytes: int, error: type[PsaGuardError], what: str) -> Any:
    """Read and strictly parse a JSON file of at most ``max_bytes``; every failure is ``error``."""
    return parse_json(read_regular_file(path, max_bytes, error, what), error, f"{what} {path}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _StrictJsonError(f"duplicate key {key[:80]!r} in a JSON object")
        result[key] = value
    return result


def _bounded_int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise _StrictJsonError(f"integer of {len(literal)} digits is longer than {MAX_JSON_INT_DIGITS}")
    return int(literal)


def _no_constant(name: str) -> Any:
    raise _StrictJsonError(f"{name} is not valid JSON")
