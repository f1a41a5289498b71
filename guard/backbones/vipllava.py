"""VipLLaVA family: ``VipLlavaForConditionalGeneration`` (features of several CLIP layers, layer-normed projector).

Feature selection is LLaVA-1.5's with several layers and the CLS token always dropped; the model's forward
takes precomputed image features as one ``(B, N, D)`` tensor rather than a list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from psaguard.backbones.llava import LlavaBackbone
from psaguard.backbones.registry import register_backbone
from psaguard.errors import InvalidInputError

__all__ = ["VipLlavaBackbone"]


@register_backbone
class VipLlavaBackbone(LlavaBackbone):
    """Hugging Face VipLLaVA: CLIP tower, multi-layer features, ``multi_modal_projector`` with a LayerNorm."""

    family = "vipllava"
    model_types = ("vipllava",)

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self._strategy = "default"  # VipLLaVA always drops CLS from every selected layer

    def model_image_inputs(self, image_features: Sequence[torch.Tensor], input_ids: torch.Tensor) -> dict[str, Any]:
        """One stacked ``(B, N, D)`` tensor, as ``VipLlavaModel.forward`` scatters it (every image has N rows)."""
        lengths = {len(features) for features in image_features}
        if len(lengths) > 1:
            raise InvalidInputError(f"VipLLaVA images must all have the same number of embeddings, got {lengths}")
        stacked = torch.stack(list(image_features)) if image_features else torch.empty(0)
        return {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=stacked)}}
