"""The ``psaguard`` command: ``main`` (its subcommands load on use), ``demo`` (the shipped demo), ``logs``
(logging configured once per command) and ``extras`` (a one-line hint for a missing optional extra)."""

from psaguard.cli.main import main

__all__ = ["main"]
