"""Turning prompts into the safety head's query: token ids with an anchor, truncation and padding.

Two rules make the query unspoofable and thread-safe:

* prompt text is tokenized with special tokens *split* (``<image>``, ``</s>``, chat markers become plain
  text pieces), and any special id that still appears is dropped, so a prompt cannot inject control tokens;
* the encoder tokenizes with its own private copy of the tokenizer's backend, configured once. The
  processor's tokenizer is shared with the application and Hugging Face switches its
  ``encode_special_tokens`` flag on every call, so sharing it would let a concurrent guard call split the
  application's real ``<image>`` token, or let the application's call hand the guard a real one.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

import torch

from psaguard.errors import InvalidPromptError
from psaguard.tokenization import tokenizer_of

__all__ = ["MAX_PROMPT_CHARS", "PromptEncoder", "clean_prompt"]

logger = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 100_000
"""Longest prompt (in characters) the guard accepts; longer prompts are refused with InvalidPromptError."""

_WINDOW_CHARS_PER_TOKEN = 64
"""Characters tokenized at each end of a long prompt per kept token: bounds tokenization cost, since only
the head and the tail tokens are kept; no token of a real vocabulary is this long."""

_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
_WHITESPACE = re.compile(r"\s+")
_ASCII_DROPPED = {
    code: None
    for code in range(128)
    if not chr(code).isspace() and unicodedata.category(chr(code)) in _DROPPED_CATEGORIES
}
"""ASCII characters :func:`clean_prompt` drops (controls that are not whitespace), as a ``str.translate`` table."""


def clean_prompt(prompt: str) -> str:
    """NFKC-normalize, drop control, format, surrogate, private-use and unassigned characters, collapse spaces.

    Zero-width and bidi characters cannot then split a word the head should see ("b\\u200bomb"), and
    compatibility forms (fullwidth letters, ligatures) read as their plain letters. Every run of whitespace
    (newlines, tabs, Unicode spaces) becomes one space and the ends are stripped, before the ends of a long
    prompt are chosen: otherwise 16k spaces on each side pushed the request itself out of the judged text.
    """
    if prompt.isascii():  # the common case, at C speed: ASCII is NFKC-stable; only its control characters go
        kept = prompt.translate(_ASCII_DROPPED)
    else:
        text = unicodedata.normalize("NFKC", "".join(ch for ch in prompt if not 0xD800 <= ord(ch) <= 0xDFFF))
        kept = "".join(ch for ch in text if ch.isspace() or unicodedata.category(ch) not in _DROPPED_CATEGORIES)
    return _WHITESPACE.sub(" ", kept).strip()


class PromptEncoder:
    """Encodes prompts as the head's query: ``[anchor] + prompt tokens``, right-padded.

    Prompts longer than ``max_tokens`` keep their first and last tokens (about half each): instructions
    usually sit at the ends, and the middle of a very long prompt is NOT judged (see docs/security.md).
    Position 0 is always the anchor (BOS, else pad), which 'first' pooling reads. Thread-safe.
    """

    def __init__(self, processor: Any, max_tokens: int, vocab_size: int) -> None:
        tokenizer = tokenizer_of(processor)
        self.tokenizer = tokenizer
        """The processor's (shared) tokenizer, for its special-token ids; encoding never goes through it."""
        self.max_tokens = max_tokens
        self.vocab_size = vocab_size
        anchor = tokenizer.bos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else anchor
        self.anchor_id = anchor if anchor is not None else self.pad_id
        if self.anchor_id is None:
            raise InvalidPromptError("the tokenizer has neither a BOS nor a pad token to anchor the query")
        self.unk_id = tokenizer.unk_token_id
        self._special_ids = frozenset(tokenizer.all_special_ids) - {self.unk_id}
        self._encode = _private_encoder(tokenizer)

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
        return [self.anchor_id, *self._text_ids(prompt, self.max_tokens - 1)]

    def pair_ids(self, prompt: str, response: str) -> list[int]:
        """The query ids of a prompt followed by an answer (the response head's query), anchor first.

        The prompt takes at most half of ``max_tokens`` (its head and tail kept), the answer the rest (its
        head and tail kept), so a long request cannot push the answer out of the judged text nor the reverse.
        """
        return self.answer_ids(self.prompt_part(prompt), response)

    def prompt_part(self, prompt: str) -> list[int]:
        """The prompt's ids in the response head's query (after the anchor): at most half of ``max_tokens``."""
        self.check(prompt)
        return self._text_ids(prompt, (self.max_tokens - 1) // 2)

    def answer_ids(self, prompt_part: Sequence[int], response: str) -> list[int]:
        """:meth:`pair_ids` from the prompt's :meth:`prompt_part` (computed once for answers to the same prompt)."""
        self.check(response)
        return [self.anchor_id, *prompt_part, *self._text_ids(response, self.max_tokens - 1 - len(prompt_part))]

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) of shape (B, T), right-padded; mask is True on real positions."""
        return self._pad([self.token_ids(p) for p in prompts])

    def encode_pairs(self, prompts: Sequence[str], responses: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode` for (prompt, answer) pairs (see :meth:`pair_ids`)."""
        if len(prompts) != len(responses):
            raise InvalidPromptError(f"got {len(prompts)} prompts but {len(responses)} responses")
        return self._pad([self.pair_ids(p, r) for p, r in zip(prompts, responses)])

    def _text_ids(self, text: str, budget: int) -> list[int]:
        """Ids of cleaned ``text``, at most ``budget`` (head and tail kept), special ids dropped, vocab-checked."""
        if budget <= 0:
            return []
        head = budget // 2
        text = clean_prompt(text)
        window = budget * _WINDOW_CHARS_PER_TOKEN
        if len(text) > 2 * window:
            # Only head and tail tokens are kept, so only the ends need tokenizing (bounded cost).
            ids = self._encode(text[:window])[:head] + self._encode(text[-window:])[-(budget - head) :]
        else:
            ids = self._encode(text)
        if len(ids) > budget:
            logger.debug("text of %d tokens truncated to its first %d and last %d", len(ids), head, budget - head)
            ids = ids[:head] + ids[len(ids) - (budget - head) :]
        ids = [i for i in ids if i not in self._special_ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise InvalidPromptError(f"tokenizer produced ids {bad[:5]} outside the model's vocabulary")
        return ids

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = True
        return ids, mask


def _private_encoder(tokenizer: Any) -> Callable[[str], list[int]]:
    """``text -> ids`` with special tokens split, never touching the shared tokenizer's state."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        from tokenizers import Tokenizer

        private = Tokenizer.from_str(backend.to_str())
        private.encode_special_tokens = True
        private.no_truncation()
        private.no_padding()
        return lambda text: private.encode(text, add_special_tokens=False).ids
    # Python (slow) tokenizers take the flag per call; they keep no per-call state to race on.
    return lambda text: tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
