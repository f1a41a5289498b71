"""Turning prompts into the safety head's query: token ids with an anchor, truncation and padding."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

import torch

from psaguard.errors import InvalidPromptError

__all__ = ["MAX_PROMPT_CHARS", "PromptEncoder", "clean_prompt"]

MAX_PROMPT_CHARS = 100_000
"""Longest prompt the guard tokenizes; longer prompts are refused rather than silently cut."""


def clean_prompt(prompt: str) -> str:
    """Drop control and format characters (keeping newlines and tabs as spaces) so they cannot hide text."""
    return "".join(
        " " if ch in "\n\r\t" else ch
        for ch in prompt
        if ch in "\n\r\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn")
    )


class PromptEncoder:
    """Encodes prompts as the head's query: ``[anchor] + prompt tokens``, right-padded.

    Special tokens spelled in the prompt (``<image>``, chat markers) are tokenized as plain text, so a
    prompt cannot inject them. Prompts longer than ``max_tokens`` keep their head and their tail, where
    instructions usually sit. Position 0 is always the anchor (BOS, else pad), which 'first' pooling reads.
    """

    def __init__(self, processor: Any, max_tokens: int, vocab_size: int) -> None:
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.max_tokens = max_tokens
        self.vocab_size = vocab_size
        anchor = self.tokenizer.bos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else anchor
        self.anchor_id = anchor if anchor is not None else self.pad_id
        if self.anchor_id is None:
            raise InvalidPromptError("the tokenizer has neither a BOS nor a pad token to anchor the query")

    @staticmethod
    def check(prompt: object) -> None:
        """Raise :class:`InvalidPromptError` unless ``prompt`` is a string of acceptable length."""
        if not isinstance(prompt, str):
            raise InvalidPromptError(f"prompt must be a string, got {type(prompt).__name__}")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidPromptError(f"prompt of {len(prompt)} characters exceeds {MAX_PROMPT_CHARS}")

    def token_ids(self, prompt: str) -> list[int]:
        """The query ids of one prompt, anchor first, truncated to ``max_tokens``."""
        self.check(prompt)
        ids = self.tokenizer(clean_prompt(prompt), add_special_tokens=False, split_special_tokens=True)["input_ids"]
        budget = self.max_tokens - 1
        if len(ids) > budget:
            head = budget // 2
            ids = ids[:head] + ids[len(ids) - (budget - head) :]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise InvalidPromptError(f"tokenizer produced ids {bad[:5]} outside the model's vocabulary")
        return [self.anchor_id, *ids]

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) of shape (B, T), right-padded; mask is True on real positions."""
        rows = [self.token_ids(p) for p in prompts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = True
        return ids, mask
