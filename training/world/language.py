"""A language corpus for the base VLM: every paraphrase of the world's templates, rewritten as another.

A real VLM's language model has read text like every request it will ever see, and knows which phrasings
mean the same; the tiny base model knows only the words of its safe VQA rows, so a word that appears only in
a held-out paraphrase keeps its random embedding. :func:`paraphrase_pairs` pairs every paraphrase of a
template (questions, harmful requests, joint clauses) with each other paraphrase of it, held-out ones
included, as plain text-to-text rows with **no safety label**; the base model reads them beside its VQA rows
(``BaseVlmConfig.language="paraphrases"``). The guard's own training rows still leave the held-out
paraphrases out.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import permutations
from typing import Any, Literal

import torch

from psaguard.injection import IGNORE_INDEX
from psaguard.tokenization import render_chat, tokenizer_of
from psaguard.training.world.prompts import HARMFUL_INTENTS, JOINT_RULES, QUESTIONS

__all__ = ["LanguageCorpus", "encode_pairs", "paraphrase_pairs"]

LanguageCorpus = Literal["none", "paraphrases"]
"""Text the base model reads beside its VQA rows: nothing, or every template paraphrase as another."""


def _groups() -> Iterator[tuple[str, ...]]:
    """The paraphrases of each template, as groups of texts meaning the same."""
    asks = sorted({q.asks for q in QUESTIONS})
    yield from (tuple(q.text for q in QUESTIONS if q.asks == a) for a in asks)
    yield from (h.texts for h in HARMFUL_INTENTS)
    yield from (j.clauses for j in JOINT_RULES)


def paraphrase_pairs() -> tuple[tuple[str, str], ...]:
    """Every ordered pair ``(source, target)`` of two different paraphrases of one template."""
    return tuple(pair for group in _groups() for pair in permutations(group, 2))


def encode_pairs(processor: Any, pairs: Sequence[tuple[str, str]]) -> list[dict[str, torch.Tensor]]:
    """Text-only SFT items: the source as a user turn, the target as the answer (loss on the target + EOS)."""
    tokenizer = tokenizer_of(processor)
    items = []
    for source, target in pairs:
        prompt = render_chat(processor, [{"role": "user", "content": [{"type": "text", "text": source}]}])
        ids = tokenizer(f"{prompt}{target} {tokenizer.eos_token}", return_tensors="pt")["input_ids"][0]
        n_prompt = tokenizer(prompt, return_tensors="pt")["input_ids"].shape[1]
        labels = ids.clone()
        labels[:n_prompt] = IGNORE_INDEX
        items.append({"input_ids": ids, "labels": labels})
    return items
