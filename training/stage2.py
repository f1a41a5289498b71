"""Stage II: LoRA on the language model (QLoRA: 4-bit NF4 base) with the Stage I guard frozen; LM loss.

The LLM input is the same as in guarded generation (``llm_tokens`` before the image embeddings), so the
adapter learns to answer with the trained safety tokens in place. The output directory holds the guard
(copied from Stage I) and the adapter in PEFT's format in ``adapter/``; ``SafetyGuard.from_pretrained``
loads both, and ``PeftModel.from_pretrained(model, out / "adapter")`` loads the adapter alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from psaguard.guard import SafetyGuard
from psaguard.loading import ADAPTER_NAME
from psaguard.training.collate import IGNORE_INDEX, Collator
from psaguard.training.config import Stage2Config
from psaguard.training.data import Example
from psaguard.training.diagnostics import warn_frozen_untrained_lm_head
from psaguard.training.loop import TrainTask
from psaguard.training.objective import GuardObjective
from psaguard.training.quant import build_lora_config, lora_target_modules
from psaguard.training.runtime import (
    StageSetup,
    build_collator,
    enable_checkpointing,
    load_data,
    load_model,
    run_stage,
    trainable_summary,
)

__all__ = ["answer_token_ids", "attach_lora", "build_stage2", "train_stage2"]

logger = logging.getLogger(__name__)


def train_stage2(cfg: Stage2Config, *, resume: bool = False) -> Path:
    """Run Stage II as configured and return the output directory (guard + ``adapter/``)."""
    return run_stage(build_stage2, cfg, resume=resume)


def build_stage2(cfg: Stage2Config, accelerator: Any) -> StageSetup:
    """Load the model and the Stage I guard (frozen), add LoRA adapters, and read the data."""
    model, processor = load_model(cfg, accelerator.device)
    guard = SafetyGuard.from_pretrained(cfg.guard, model, processor, load_adapter=False)
    guard.classifier.modules.requires_grad_(False).eval()
    collate = build_collator(guard, cfg)
    train_set, eval_set, reports = load_data(cfg, guard, collate)
    # Answers labelled harmful train the response head (Stage I); Stage II must never learn to say them.
    train_set = [e for e in train_set if not (e.response_level or 0) > 0]
    eval_set = [e for e in eval_set if not (e.response_level or 0) > 0] if eval_set else eval_set
    language_model = guard.classifier.backbone.language_model_name
    targets = lora_target_modules(cfg.lora, language_model)
    warn_frozen_untrained_lm_head(model, targets, answer_token_ids(collate, train_set))
    adapted = attach_lora(model, cfg, language_model)
    objective = GuardObjective(guard, adapted, lm_weight=1.0, head_weight=0.0)
    logger.info("stage II: %s", trainable_summary(objective))

    def save_result(out: Path) -> None:
        guard.save_pretrained(out)
        adapted.save_pretrained(out / ADAPTER_NAME)

    task = TrainTask(objective, train_set, eval_set, collate, save_result)
    return StageSetup(task=task, guard=guard, reports=reports)


def attach_lora(model: nn.Module, cfg: Stage2Config, language_model_name: str = "language_model") -> nn.Module:
    """Wrap ``model`` with fresh LoRA adapters (after the k-bit preparation QLoRA needs); returns the PeftModel.

    Unless ``cfg.lora.target_modules`` says otherwise, they go into the module ``language_model_name`` only.

    PEFT injects the adapters into ``model`` in place; only the adapter weights are trainable.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    if cfg.quant.load_in_4bit:
        # Casts the unquantized weights to float32 for stable training; checkpointing is enabled below.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    return get_peft_model(model, build_lora_config(cfg.lora, language_model_name))


def answer_token_ids(collate: Collator, examples: Sequence[Example], limit: int = 512) -> set[int]:
    """Token ids the LM loss is computed on (the labelled answer tokens) in the first ``limit`` examples."""
    ids: set[int] = set()
    for example in examples[:limit]:
        ids.update(label for label in collate.encode(example)[1] if label != IGNORE_INDEX)
    return ids
