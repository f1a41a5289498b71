"""VipLLaVA family: ``VipLlavaForConditionalGeneration`` (features of several CLIP layers, layer-normed projector).

Feature selection is LLaVA-1.5's with several layers and the CLS token always dropped; the model's forward
takes precomputed image features as one tensor rather than a list (:func:`~psaguard.injection.features_as_tensor`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from psaguard.backbones.encoder_only import EncoderOnlyBackbone
from psaguard.backbones.llava import LlavaBackbone
from psaguard.backbones.registry import register_backbone
from psaguard.injection import features_as_tensor

__all__ = ["EncoderOnlyVipLlavaBackbone", "VipLlavaBackbone"]


@register_backbone
class VipLlavaBackbone(LlavaBackbone):
    """Hugging Face VipLLaVA: CLIP tower, multi-layer features, ``multi_modal_projector`` with a LayerNorm."""

    family = "vipllava"
    model_types = ("vipllava",)

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self._strategy = "default"  # VipLLaVA always drops CLS from every selected layer (its config names none)

    def model_image_inputs(self, image_features: Sequence[torch.Tensor], input_ids: torch.Tensor) -> dict[str, Any]:
        return features_as_tensor(image_features, input_ids)


@register_backbone
class EncoderOnlyVipLlavaBackbone(EncoderOnlyBackbone, VipLlavaBackbone):
    """Classifier-only: the CLIP tower and token embeddings; fingerprints as ``'vipllava'``."""
