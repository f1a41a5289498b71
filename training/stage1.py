"""Stage I: train the safety modules (projector, head_tokens, llm_tokens, head) on a frozen model.

Loss = LM loss + lambda * (CE(level) + CE(type)). The head's cross-entropies train the projector, the
head and ``head_tokens``; the LM loss, through the frozen (optionally 4-bit) language model, trains
``llm_tokens`` only. The result is a guard directory (``psaguard_config.json`` + weights). With eval data
the saved guard is the best evaluated step (keep-best), its heads' temperatures fitted on the eval split
(:mod:`psaguard.training.calibration`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from psaguard.errors import ConfigError
from psaguard.guard import SafetyGuard
from psaguard.loading import TORCH_DTYPES
from psaguard.training.calibration import calibrated_guard
from psaguard.training.config import Stage1Config
from psaguard.training.data import Example
from psaguard.training.diagnostics import label_entropy, warn_untrained_llm_tokens
from psaguard.training.loop import TrainTask
from psaguard.training.objective import GuardObjective
from psaguard.training.runtime import (
    StageSetup,
    build_collator,
    enable_checkpointing,
    load_data,
    load_model,
    run_stage,
    trainable_summary,
)

__all__ = ["build_stage1", "train_stage1"]

logger = logging.getLogger(__name__)


def train_stage1(cfg: Stage1Config, *, resume: bool = False) -> Path:
    """Run Stage I as configured and return the output directory, which holds the trained guard.

    With ``resume=True`` the run continues from the newest checkpoint in ``cfg.output_dir/checkpoints``
    and ends exactly where an uninterrupted run would have.
    """
    return run_stage(build_stage1, cfg, resume=resume)


def build_stage1(cfg: Stage1Config, accelerator: Any) -> StageSetup:
    """Load the model, attach (or load) the guard, freeze all but the safety modules, and read the data."""
    model, processor = load_model(cfg, accelerator.device)
    guard = _start_guard(cfg, model, processor)
    # Trainable modules keep full-precision weights by default (as master weights would), whatever the model's dtype.
    modules, inject_llm_tokens = guard.classifier.modules, guard.classifier.config.tokens.inject_llm_tokens
    modules.to(dtype=TORCH_DTYPES[cfg.modules_dtype]).requires_grad_(True)
    if cfg.lm_loss_weight == 0 or not inject_llm_tokens:
        modules.llm_tokens.requires_grad_(False)  # nothing would train them
    warn_untrained_llm_tokens(inject_llm_tokens, cfg.lm_loss_weight, cfg.init_guard is not None)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    collate = build_collator(guard, cfg)
    train_set, eval_set, reports = load_data(cfg, guard, collate)
    _check_response_head(guard, train_set)
    objective = GuardObjective(guard, model, lm_weight=cfg.lm_loss_weight, head_weight=cfg.head_loss_weight)
    logger.info("stage I: %s", trainable_summary(objective))
    # A head that only learned the label frequencies has this loss (ln 4 + ln 7 on balanced default labels).
    chance = label_entropy(e.level for e in train_set) + label_entropy(e.type for e in train_set)

    def save_result(out: Path) -> None:
        result = guard
        if cfg.calibrate and eval_set and cfg.head_loss_weight > 0:
            result, _ = calibrated_guard(guard, eval_set, cfg.eval_batch_size or cfg.batch_size)
        result.save_pretrained(out)

    task = TrainTask(objective, train_set, eval_set, collate, save_result=save_result, chance_head_loss=chance)
    return StageSetup(task=task, guard=guard, reports=reports)


def _start_guard(cfg: Stage1Config, model: Any, processor: Any) -> SafetyGuard:
    """A fresh guard on ``model``, or the one of ``cfg.init_guard`` without its custom categories."""
    if cfg.init_guard is None:
        return SafetyGuard.attach(model, processor, cfg.guard)
    guard = SafetyGuard.from_pretrained(cfg.init_guard, model, processor, load_adapter=False)
    for category in guard.categories:  # fitted on the features this run retrains: they would be stale
        logger.warning(
            "Stage I drops the custom category %r of %s: add it again (add_category) after training",
            category.code,
            cfg.init_guard,
        )
        guard.remove_category(category.code)
    return guard


def _check_response_head(guard: SafetyGuard, train_set: Sequence[Example]) -> None:
    if not guard.classifier.has_response_head and any(e.has_response_labels for e in train_set):
        raise ConfigError(
            "the training rows label their answers (response_harmful/level/type) but the guard has no response "
            "head: set guard.head.response_head: true in the config (or drop the labels)"
        )
