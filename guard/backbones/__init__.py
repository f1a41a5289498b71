"""Model-family adapters: one small :class:`Backbone` subclass per family of vision-language models."""

from __future__ import annotations

from torch import nn

from psaguard.backbones.base import Backbone, VisionFeatures
from psaguard.backbones.encoder_only import (
    ENCODER_ONLY_BACKBONES,
    EncoderOnlyLlavaBackbone,
    EncoderOnlyLlavaNextBackbone,
    EncoderOnlyModel,
)
from psaguard.backbones.llava import LlavaBackbone
from psaguard.backbones.llava_next import LlavaNextBackbone
from psaguard.errors import UnsupportedModelError

__all__ = [
    "BACKBONES",
    "ENCODER_ONLY_BACKBONES",
    "Backbone",
    "EncoderOnlyLlavaBackbone",
    "EncoderOnlyLlavaNextBackbone",
    "EncoderOnlyModel",
    "LlavaBackbone",
    "LlavaNextBackbone",
    "VisionFeatures",
    "resolve_backbone",
]

# Classifier-only adapters come first: an EncoderOnlyModel carries its full model's config.model_type, so
# the full-model adapters would claim it too.
BACKBONES: tuple[type[Backbone], ...] = (*ENCODER_ONLY_BACKBONES, LlavaBackbone, LlavaNextBackbone)
"""Known family adapters, tried in order."""


def resolve_backbone(model: nn.Module, backbones: tuple[type[Backbone], ...] = BACKBONES) -> Backbone:
    """Return the adapter for ``model``; raise :class:`UnsupportedModelError` for unknown families."""
    for backbone in backbones:
        if backbone.supports(model):
            return backbone(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    supported = sorted({t for b in backbones for t in b.model_types})
    raise UnsupportedModelError(
        f"{type(model).__name__} (model_type={model_type!r}) is not a supported vision-language model; "
        f"supported model types: {supported}"
    )
