"""Classifier-only guards: what :meth:`SafetyGuard.from_pretrained_classifier` loads besides the guard itself.

The model side is what :func:`~psaguard.backbones.encoder_checkpoint.load_encoder_only` reads of the base
checkpoint (the model with only its vision tower, projector and input embeddings) and the base model's
processor. A Stage II LoRA adapter saved with the guard is not loaded:
it changes the language model's answers, not the verdicts, which is checked from its tensor names.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from psaguard.backbones.encoder_checkpoint import load_encoder_only
from psaguard.checkpoints.adapter_files import ADAPTER_WEIGHTS_NAME
from psaguard.config import ModelFingerprint
from psaguard.dtypes import DtypeRequest
from psaguard.errors import CheckpointError

__all__ = ["check_adapter_leaves_verdicts", "load_classifier_parts"]

logger = logging.getLogger(__name__)

# Modules of the base model the verdict reads; an adapter touching them would change verdicts.
_VERDICT_MODULES = frozenset({"vision_tower", "embed_tokens"})


def load_classifier_parts(
    model_path: str | Path,
    processor: Any | None = None,
    *,
    revision: str | None = None,
    dtype: DtypeRequest = None,
    device: str | torch.device | None = None,
    fingerprint: ModelFingerprint | None = None,
) -> tuple[nn.Module, Any]:
    """The classifier-only model of ``model_path`` and its processor (``processor`` if given, else loaded).

    ``dtype`` as in :func:`~psaguard.backbones.encoder_checkpoint.load_encoder_only` (None: what ``device``
    runs fast). ``fingerprint`` (the guard's) is checked before any weight is read. Raises
    :class:`~psaguard.errors.CheckpointError` when the processor cannot be loaded.
    """
    model = load_encoder_only(model_path, revision=revision, dtype=dtype, device=device, fingerprint=fingerprint)
    if processor is None:
        from transformers import AutoProcessor

        try:
            processor = AutoProcessor.from_pretrained(str(model_path), revision=revision)
        except (OSError, ValueError) as err:
            raise CheckpointError(f"cannot load the processor of {model_path}: {err}") from err
    return model, processor


def check_adapter_leaves_verdicts(adapter: Path) -> None:
    """Refuse a guard whose LoRA adapter changes what the verdict reads, since it is not loaded here.

    An adapter is fine when all of its tensors sit in the language model's layers (the default Stage II
    target, :data:`psaguard.training.config.LLM_LINEAR_PATTERN`). Nothing to check when there is none.
    """
    if not (adapter / "adapter_config.json").is_file():
        return
    weights = adapter / ADAPTER_WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{adapter} has an adapter_config.json but no {ADAPTER_WEIGHTS_NAME}")
    touching = sorted(name for name in _tensor_names(weights) if not _llm_only(name))
    if touching:
        raise CheckpointError(
            f"the LoRA adapter in {adapter} changes parts the verdict reads ({touching[:3]}); classifier-only "
            "mode does not load adapters, so load the full model with SafetyGuard.from_pretrained"
        )
    logger.info("not loading the LoRA adapter in %s: it changes the language model only, not verdicts", adapter)


def _llm_only(tensor_name: str) -> bool:
    """Whether an adapter tensor (``base_model.model.model.language_model.layers.0...``) is inside the LLM."""
    modules = set(tensor_name.split("."))
    return "language_model" in modules and not modules & _VERDICT_MODULES


def _tensor_names(path: Path) -> list[str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"corrupt or truncated adapter file {path}: {err}") from err
