"""Request images: safe decoding with typed errors (``decode``), bounded structural pre-checks from the
magic bytes (``checks``), decoding in killable worker processes (``isolated``) and the vision budget
(``budget``). The package's own names are ``decode``'s."""

from psaguard.images.decode import *  # noqa: F403 (the package re-exports decode's API, listed there once)
from psaguard.images.decode import __all__
