"""Bearer API keys: read from a file (one key a line) or an environment variable, compared in constant time."""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable
from pathlib import Path

from psaguard.errors import ConfigError

__all__ = ["API_KEYS_ENV", "ApiKeys", "load_api_keys"]

API_KEYS_ENV = "PSAGUARD_API_KEYS"
"""Environment variable holding comma-separated API keys."""

_MAX_KEY_FILE_BYTES = 1024 * 1024
_MIN_KEY_CHARS = 16  # shorter keys are guessable; refuse them rather than serve with a weak one


class ApiKeys:
    """The accepted keys; empty means no authentication. ``repr`` never shows a key."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._keys = tuple(key.encode() for key in keys)
        for key in self._keys:
            if len(key) < _MIN_KEY_CHARS:
                raise ConfigError(f"API keys must be at least {_MIN_KEY_CHARS} characters long")

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def allows(self, authorization: str | None) -> bool:
        """True when authentication is off, or ``authorization`` is 'Bearer <a known key>'."""
        if not self._keys:
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

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._keys)} keys)"


def load_api_keys(path: str | Path | None = None, env: str = API_KEYS_ENV) -> ApiKeys:
    """Keys from ``path`` (one a line, '#' comments) plus those in the ``env`` variable (comma-separated)."""
    keys: list[str] = []
    if path is not None:
        file = Path(path)
        try:
            if file.stat().st_size > _MAX_KEY_FILE_BYTES:
                raise ConfigError(f"API key file {file} is larger than {_MAX_KEY_FILE_BYTES} bytes")
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read API key file {file}: {err}") from err
        keys += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise ConfigError(f"API key file {file} holds no key")
    keys += [key.strip() for key in os.environ.get(env, "").split(",") if key.strip()]
    return ApiKeys(keys)
