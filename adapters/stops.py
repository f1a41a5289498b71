"""Stop sequences for local generation: halt generation at a stop string and cut the answer before it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import StoppingCriteria

__all__ = ["StopBuffer", "StopOnStrings", "truncate_at_stop"]


def truncate_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to (not including) the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


class StopBuffer:
    """Streams text while holding back just enough to never emit the start of a stop string.

    ``push(chunk)`` returns the text that is safe to emit; once a stop string has appeared, ``stopped`` is
    True and everything after it is dropped. ``flush()`` returns what is held back at the end of the stream.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        # A stop string can straddle chunks, so up to (longest stop - 1) characters wait for the next chunk.
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._pending = ""
        self.stopped = False

    def push(self, chunk: str) -> str:
        if self.stopped:
            return ""
        text, found = truncate_at_stop(self._pending + chunk, self.stops)
        if found:
            self.stopped, self._pending = True, ""
            return text
        split = max(len(text) - self._hold, 0)
        self._pending = text[split:]
        return text[:split]

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return text


class StopOnStrings(StoppingCriteria):
    """Halts ``model.generate`` once the decoded answer holds a stop string; one instance per call.

    Works with any tokenizer (transformers' ``stop_strings`` needs a vocabulary it can clean, which some
    tokenizers do not allow). The answer starts where the first call sees one new token.
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self._start: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        if self._start is None:
            self._start = input_ids.shape[1] - 1
        texts = self.tokenizer.batch_decode(input_ids[:, self._start :], skip_special_tokens=True)
        done = [any(stop in text for stop in self.stops) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
