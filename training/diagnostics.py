"""Warnings for runs that look fine but cannot work: a head at chance, a schedule that never peaks,
safety tokens that are injected but never trained, text the tokenizer cannot read, a frozen untrained
output layer.

Each check logs one ``WARNING`` through this module's logger and returns whether it fired, so that
tests (and callers) can tell without parsing logs.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from psaguard.training.data import Example, UnknownTokens

__all__ = [
    "UNTRAINED_STD_TOLERANCE",
    "ChanceCheck",
    "count_unknown_tokens",
    "label_entropy",
    "untrained_rows",
    "warn_frozen_untrained_lm_head",
    "warn_schedule",
    "warn_unknown_tokens",
    "warn_untrained_llm_tokens",
]

logger = logging.getLogger(__name__)

CHANCE_TOLERANCE = 0.05
"""A head loss within 5 % of the label entropy (or above it) counts as 'at chance'."""

UNTRAINED_STD_TOLERANCE = 0.15
"""An output-embedding row whose std is within 15 % of the model's ``initializer_range`` looks untrained."""

_UNTRAINED_SHARE = 0.2  # warn when more than a fifth of the rows the answers use look untrained
_LISTED_WORDS = 20


def label_entropy(labels: Iterable[int]) -> float:
    """Entropy (nats) of the label frequencies: the cross-entropy of always predicting those frequencies."""
    counts = Counter(labels)
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values()) if total else 0.0


class ChanceCheck:
    """Warns once when the training head loss is still at chance after a share of the steps.

    Args:
        chance: The head loss of a constant prediction of the label frequencies (None disables the check).
        total_steps: Steps of the run.
        share: The check runs at the first logged step at or after ``share * total_steps``.
    """

    def __init__(self, chance: float | None, total_steps: int, share: float) -> None:
        self.chance = chance
        self.after = max(1, math.ceil(share * total_steps))
        self.total = total_steps
        self.fired: bool | None = None  # None until checked

    def check(self, record: dict[str, float]) -> bool:
        """Look at a training log record; True if this call warned."""
        if self.chance is None or self.fired is not None or record["step"] < self.after:
            return False
        self.fired = record["head_loss"] >= (1 - CHANCE_TOLERANCE) * self.chance
        if self.fired:
            logger.warning(
                "the safety head is not learning: head loss %.3f after %d of %d steps is at chance (%.3f, the "
                "loss of always predicting the label frequencies); it predicts the majority class. Try a higher "
                "lr, more steps, or the small-data recipe (examples/configs/stage1_small.yaml)",
                record["head_loss"],
                int(record["step"]),
                self.total,
                self.chance,
            )
        return self.fired


def warn_schedule(warmup_steps: int, total_steps: int) -> bool:
    """Warn when the warm-up is at least as long as the run (the learning rate never reaches its peak)."""
    if warmup_steps < total_steps:
        return False
    logger.warning(
        "warmup_steps=%d is not shorter than the run (%d steps): the learning rate never reaches lr; "
        "lower warmup_steps (e.g. to %d)",
        warmup_steps,
        total_steps,
        max(1, total_steps // 10),
    )
    return True


def warn_untrained_llm_tokens(inject: bool, lm_loss_weight: float, init_guard: bool) -> bool:
    """Warn when Stage I leaves ``llm_tokens`` at their init although generation injects them."""
    if not inject or lm_loss_weight > 0 or init_guard:
        return False
    logger.warning(
        "lm_loss_weight=0 leaves llm_tokens untrained (random init), but guarded generation injects them "
        "before the image (tokens.inject_llm_tokens=true): train them (lm_loss_weight > 0), or set "
        "guard.tokens.inject_llm_tokens=false"
    )
    return True


def count_unknown_tokens(tokenizer: Any, examples: Sequence[Example]) -> UnknownTokens | None:
    """Count unknown tokens in every turn of ``examples``; None for tokenizers without an unk token."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return None
    texts = [text for example in examples for turn in example.turns for text in turn]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    tokens = sum(len(ids) for ids in encoded)
    unknown = sum(ids.count(unk) for ids in encoded)
    words = _unknown_words(tokenizer, unk, [text for text, ids in zip(texts, encoded) if unk in ids])
    return UnknownTokens(
        tokens=tokens,
        unknown=unknown,
        rate=unknown / tokens if tokens else 0.0,
        words=dict(words.most_common(_LISTED_WORDS)),
    )


def _unknown_words(tokenizer: Any, unk: int, texts: Sequence[str]) -> Counter[str]:
    """How often each whitespace word of ``texts`` that holds an unknown token occurs (each word tokenized once)."""
    words: Counter[str] = Counter()
    verdict: dict[str, bool] = {}
    for word in (word for text in texts for word in text.split()):
        if word not in verdict:
            verdict[word] = unk in tokenizer(word, add_special_tokens=False)["input_ids"]
        if verdict[word]:
            words[word] += 1
    return words


def warn_unknown_tokens(stats: UnknownTokens | None, threshold: float) -> bool:
    """Warn when the unknown-token rate of the training text is above ``threshold``."""
    if stats is None or stats.rate <= threshold:
        return False
    logger.warning(
        "the tokenizer maps %.1f%% of the training text's tokens to its unknown token (%d of %d; "
        "max_unknown_token_rate %.3g), e.g. %s: the head and the LLM cannot tell these words apart. Use a base "
        "model whose tokenizer covers the data's words (counts in data_report.json)",
        100 * stats.rate,
        stats.unknown,
        stats.tokens,
        threshold,
        ", ".join(list(stats.words)[:8]) or "(no whole word)",
    )
    return True


def untrained_rows(weight: torch.Tensor, token_ids: Iterable[int], initializer_range: float) -> list[int]:
    """The ``token_ids`` whose rows of ``weight`` look as an N(0, initializer_range) init left them."""
    ids = sorted({i for i in token_ids if 0 <= i < weight.shape[0]})
    if not ids:
        return []
    std = weight.detach()[ids].float().std(dim=1)
    close = (std - initializer_range).abs() <= UNTRAINED_STD_TOLERANCE * initializer_range
    return [i for i, flag in zip(ids, close.tolist()) if flag]


def warn_frozen_untrained_lm_head(model: nn.Module, target_modules: str, answer_ids: Iterable[int]) -> bool:
    """Warn when LoRA leaves ``lm_head`` frozen although the rows the answers need look untrained.

    ``target_modules`` is the LoRA regex (full match); the output layer counts as targeted when any module
    name ending in ``lm_head`` matches it.
    """
    output = _frozen_output_layer(model, target_modules)
    if output is None:
        return False
    config = getattr(model, "config", None)
    text_config = getattr(config, "text_config", None) or config
    init = getattr(text_config, "initializer_range", None)
    ids = set(answer_ids)
    if init is None or not ids:
        return False
    untrained = untrained_rows(output.weight, ids, float(init))
    if len(untrained) <= _UNTRAINED_SHARE * len(ids):
        return False
    logger.warning(
        "%d of the %d output-embedding rows the training answers use look untrained (std within %d%% of "
        "initializer_range %.3g), and lora.target_modules leaves lm_head frozen: the LM loss cannot go far "
        "down. Add lm_head to lora.target_modules (e.g. '(%s)|lm_head')",
        len(untrained),
        len(ids),
        round(100 * UNTRAINED_STD_TOLERANCE),
        init,
        target_modules,
    )
    return True


def _frozen_output_layer(model: nn.Module, target_modules: str) -> nn.Module | None:
    """The model's output layer when it has weights and no module name of it matches ``target_modules``."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is None or not hasattr(output, "weight"):
        return None
    head_names = [name for name, module in model.named_modules() if module is output]
    if any(re.fullmatch(target_modules, name) for name in head_names):
        return None
    return output
