"""Other guards' published numbers on the benchmarks, each with its citation, shown beside psaguard's.

A :class:`PeerNumber` needs a citation (paper or report, table, row and column) and says the split it was
measured on. psaguard ships the published numbers it has read in their source (:func:`published_peers`,
``peers.json`` of the training package: each one copied from its table, none computed or guessed);
:func:`load_peers` adds a user's own (``--peers FILE``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from psaguard.errors import ConfigError

__all__ = ["PEER_GUARDS", "PeerNumber", "load_peers", "peer_columns", "published_peers"]


PEER_GUARDS = (
    "LlavaGuard",
    "Llama Guard 3 Vision",
    "Llama Guard 4",
    "ShieldGemma 2",
    "GuardReasoner-VL",
    "SafeGuard-VL",
    "LLaVAShield",
    "SingGuard-8B",
)
"""The order of the peer columns; a guard not listed here follows them, in the order of its first number."""


class PeerNumber(BaseModel):
    """One published number of another guard on a benchmark, with where it was published."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    guard: str = Field(description="The peer guard, e.g. 'LlavaGuard'.")
    suite: str = Field(
        description="The benchmark it is on: a format name of `psaguard data formats` (e.g. 'vlguard') or a suite name."
    )
    metric: Literal["precision", "recall", "f1", "fpr"] = Field(
        description="The DetectionMetrics field it compares with (on the risky/unsafe class; fpr on the safe one)."
    )
    value: float = Field(ge=0, le=1, description="The number as a fraction (0.853, not 85.3).")
    citation: str = Field(
        min_length=8, description="Paper or report, table (row, column), e.g. 'Helff et al., Table 2'."
    )
    split: str = Field("", description="The split and protocol the number was measured on, as the source states.")


@cache
def published_peers() -> tuple[PeerNumber, ...]:
    """The peers' published numbers psaguard ships (``peers.json`` of this package), each with its source."""
    text = resources.files("psaguard.training").joinpath("peers.json").read_text(encoding="utf-8")
    return tuple(PeerNumber.model_validate(item) for item in json.loads(text))


def load_peers(path: Path | None, *, published: bool = True) -> list[PeerNumber]:
    """:func:`published_peers` (unless ``published`` is false) plus the cited numbers in ``path`` (a JSON list
    of :class:`PeerNumber` objects, the shape of the shipped ``peers.json``).

    Raises:
        ConfigError: The file is unreadable or a number lacks a field (a citation included).
    """
    peers = list(published_peers()) if published else []
    if path is None:
        return peers
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
        return peers + [PeerNumber.model_validate(item) for item in items]
    except (OSError, ValueError, TypeError) as err:  # pydantic's ValidationError is a ValueError
        raise ConfigError(f"cannot read peer numbers from {path}: {err}") from err


def peer_columns(peers: Sequence[PeerNumber]) -> list[str]:
    """The peer guards with a number here: those of :data:`PEER_GUARDS` in its order, then the others."""
    named = {p.guard for p in peers}
    others = [g for g in dict.fromkeys(p.guard for p in peers) if g not in PEER_GUARDS]
    return [g for g in PEER_GUARDS if g in named] + others
