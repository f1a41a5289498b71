"""Bearer API keys: read from a file (one key a line, re-read when it changes) or an environment variable,
compared in constant time."""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from psaguard.errors import ConfigError

__all__ = ["API_KEYS_ENV", "ApiKeys", "load_api_keys"]

API_KEYS_ENV = "PSAGUARD_API_KEYS"
"""Environment variable holding comma-separated API keys."""

logger = logging.getLogger(__name__)

_MAX_KEY_FILE_BYTES = 1024 * 1024
_MIN_KEY_CHARS = 16  # shorter keys are guessable; refuse them rather than serve with a weak one


class ApiKeys:
    """The accepted keys; empty means no authentication. ``repr`` never shows a key.

    Keys read by :func:`load_api_keys` from a file follow the file: when its modification time, size or inode
    changes (checked at most every ``reload_interval_s``), it is read again. A file that becomes unreadable,
    empty or invalid refuses every request (fail closed) until it is fixed; the environment's keys stay.
    """

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._keys = _encoded(keys)
        self._file: Path | None = None
        self._env_keys: tuple[str, ...] = ()
        self._stamp: tuple[int, int, int] | None = None
        self._reload_interval_s = 1.0
        self._next_check = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self._keys) or self._file is not None

    def allows(self, authorization: str | None) -> bool:
        """True when authentication is off, or ``authorization`` is 'Bearer <a known key>'."""
        self._refresh()
        if not self.enabled:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        given = token.strip().encode()
        # Compare against every key, without stopping early, so timing tells nothing about which matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, key)
        return matched

    def _follow(self, file: Path, env_keys: Sequence[str], reload_interval_s: float) -> None:
        self._file, self._env_keys, self._reload_interval_s = file, tuple(env_keys), reload_interval_s
        self._stamp = _stamp(file)
        self._next_check = time.monotonic() + reload_interval_s

    def _refresh(self) -> None:
        if self._file is None or time.monotonic() < self._next_check:
            return
        self._next_check = time.monotonic() + self._reload_interval_s
        stamp = _stamp(self._file)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._keys = _encoded([*_read_key_file(self._file), *self._env_keys])
            logger.info("API key file %s reloaded", self._file)
        except ConfigError as err:
            self._keys = _encoded(self._env_keys)  # the file's keys are gone: only the environment's remain
            logger.error("API key file %s is invalid; its keys are refused until it is fixed: %s", self._file, err)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._keys)} keys)"


def load_api_keys(
    path: str | Path | None = None, env: str = API_KEYS_ENV, *, reload_interval_s: float = 1.0
) -> ApiKeys:
    """Keys from ``path`` (one a line, '#' comments; re-read when it changes) plus those in the ``env``
    variable (comma-separated, read once)."""
    env_keys = [key.strip() for key in os.environ.get(env, "").split(",") if key.strip()]
    if path is None:
        return ApiKeys(env_keys)
    file = Path(path)
    keys = ApiKeys([*_read_key_file(file), *env_keys])
    keys._follow(file, env_keys, reload_interval_s)
    return keys


def _read_key_file(file: Path) -> list[str]:
    try:
        if file.stat().st_size > _MAX_KEY_FILE_BYTES:
            raise ConfigError(f"API key file {file} is larger than {_MAX_KEY_FILE_BYTES} bytes")
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read API key file {file}: {err}") from err
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise ConfigError(f"API key file {file} holds no key")
    _encoded(keys)  # length check
    return keys


def _encoded(keys: Iterable[str]) -> tuple[bytes, ...]:
    encoded = tuple(key.encode() for key in keys)
    for key in encoded:
        if len(key) < _MIN_KEY_CHARS:
            raise ConfigError(f"API keys must be at least {_MIN_KEY_CHARS} characters long")
    return encoded


def _stamp(file: Path) -> tuple[int, int, int] | None:
    try:
        stat = file.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino
