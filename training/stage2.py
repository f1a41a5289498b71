"""Stage II: LoRA on the language model (QLoRA: 4-bit NF4 base) with the Stage I guard frozen; LM loss.

The LLM input is the same as in guarded generation (``llm_tokens`` before the image embeddings), so the
adapter learns to answer with the trained safety tokens in place. The output directory holds the guard
(copied from Stage I) and the adapter in PEFT's format in ``adapter/``; ``SafetyGuard.from_pretrained``
loads both, and ``PeftModel.from_pretrained(model, out / "adapter")`` loads the adapter alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from psaguard.guard import ADAPTER_NAME, SafetyGuard
from psaguard.training.config import Stage2Config
from psaguard.training.loop import TrainTask, run_training
from psaguard.training.objective import GuardObjective
from psaguard.training.quant import build_lora_config
from psaguard.training.runtime import (
    build_collator,
    final_evaluation,
    load_data,
    load_model,
    make_accelerator,
    trainable_summary,
    write_run_files,
)

__all__ = ["attach_lora", "train_stage2"]

logger = logging.getLogger(__name__)


def train_stage2(cfg: Stage2Config, *, resume: bool = False) -> Path:
    """Run Stage II as configured and return the output directory (guard + ``adapter/``)."""
    accelerator = make_accelerator(cfg)
    model, processor = load_model(cfg, accelerator.device)
    guard = SafetyGuard.from_pretrained(cfg.guard, model, processor, load_adapter=False)
    guard.modules.requires_grad_(False).eval()
    adapted = attach_lora(model, cfg)
    train_set, eval_set, reports = load_data(cfg, guard.config.taxonomy)
    collate = build_collator(guard, cfg)
    collate.check([*train_set, *(eval_set or [])])
    objective = GuardObjective(guard, adapted, lm_weight=1.0, head_weight=0.0)
    logger.info("stage II: %s", trainable_summary(objective))

    def save_result(out: Path) -> None:
        guard.save_pretrained(out)
        adapted.save_pretrained(out / ADAPTER_NAME)

    state = run_training(
        TrainTask(objective, train_set, eval_set, collate, save_result), cfg, accelerator, resume=resume
    )
    if accelerator.is_main_process:
        write_run_files(cfg, state, reports)
        final_evaluation(guard, eval_set, cfg)
    return cfg.output_dir


def attach_lora(model: nn.Module, cfg: Stage2Config) -> nn.Module:
    """Wrap ``model`` with fresh LoRA adapters (after the k-bit preparation QLoRA needs); returns the PeftModel.

    PEFT injects the adapters into ``model`` in place; only the adapter weights are trainable.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    checkpointing = {"use_reentrant": False}  # re-entrant checkpointing needs inputs that require grad
    if cfg.quant.load_in_4bit:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing, gradient_checkpointing_kwargs=checkpointing
        )
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    return get_peft_model(model, build_lora_config(cfg.lora))
