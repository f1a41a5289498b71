"""Forcing a decode: :class:`ForcedAnswer` makes ``model.generate`` write given tokens, then EOS.

A guard's streaming monitor judges the answer the model writes; to measure it on harmful answers a model
would not write on its own (the synthetic world's tiny model was never taught one), the decode is forced to
such an answer token by token and the guard judges the forced tokens as it would its own. ``psaguard demo``
and the world experiment's monitor scores use it.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

__all__ = ["ForcedAnswer"]


class ForcedAnswer(LogitsProcessor):
    """Forces ``model.generate`` to decode ``token_ids`` then EOS: every other token gets ``-inf``.

    One instance serves one ``generate`` call (it notes the prompt's length at its first step).
    """

    def __init__(self, token_ids: list[int], eos_token_id: int) -> None:
        self.token_ids = [*token_ids, eos_token_id]
        self.start: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        step = min(input_ids.shape[1] - self.start, len(self.token_ids) - 1)
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.token_ids[step]] = 0.0
        return forced
