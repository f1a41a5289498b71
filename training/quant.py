"""Pure builders of the bitsandbytes and LoRA configs, from the stage configs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from psaguard.backbones import Backbone, registered_backbones
from psaguard.loading import TORCH_DTYPES
from psaguard.training.config import LoraSettings, QuantConfig, llm_linear_pattern

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

__all__ = ["build_bnb_config", "build_lora_config", "lora_target_modules", "unquantized_modules_for"]


def build_bnb_config(
    cfg: QuantConfig, family_skip_modules: Sequence[str] = Backbone.unquantized_modules
) -> BitsAndBytesConfig | None:
    """The ``BitsAndBytesConfig`` for ``cfg``, or None when the model is not quantized.

    Only the language model is quantized: the vision tower, the model's projector and ``lm_head`` stay in
    full precision (``skip_modules`` must be full module names, e.g. ``model.vision_tower``; without them, the
    model family's ``family_skip_modules``, its adapter's ``unquantized_modules``).
    """
    if not cfg.load_in_4bit:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quant_type,
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=TORCH_DTYPES[cfg.compute_dtype],
        llm_int8_skip_modules=list(family_skip_modules if cfg.skip_modules is None else cfg.skip_modules),
    )


def build_lora_config(cfg: LoraSettings, language_model_name: str = "language_model") -> LoraConfig:
    """The PEFT ``LoraConfig`` for ``cfg`` (causal-LM task, adapters on ``cfg.target_modules``).

    Without ``target_modules`` the adapters go on the projections of the module ``language_model_name``
    (the family adapter's :attr:`~psaguard.backbones.Backbone.language_model_name`).
    """
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=lora_target_modules(cfg, language_model_name),
        bias=cfg.bias,
        task_type="CAUSAL_LM",
    )


def lora_target_modules(cfg: LoraSettings, language_model_name: str = "language_model") -> str:
    """The LoRA target regex: ``cfg.target_modules``, else the projections of the module ``language_model_name``."""
    return cfg.target_modules or llm_linear_pattern(language_model_name)


def unquantized_modules_for(model_type: str) -> tuple[str, ...]:
    """The modules the adapter of ``model_type`` keeps out of 4-bit loading (LLaVA's names if none claims it)."""
    adapter = next((a for a in registered_backbones() if model_type in a.model_types), Backbone)
    return adapter.unquantized_modules
