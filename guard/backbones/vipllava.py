"""VipLLaVA family: ``VipLlavaForConditionalGeneration`` (features of several CLIP layers, layer-normed projector).

LLaVA-1.5's adapter (the parent class) with one override: the CLS token is always dropped from every
selected layer (:attr:`VipLlavaBackbone.feature_strategy`), as the model does; its config names no strategy.
"""

from __future__ import annotations

from psaguard.backbones.llava import LlavaBackbone
from psaguard.backbones.registry import register_backbone

__all__ = ["VipLlavaBackbone"]


@register_backbone
class VipLlavaBackbone(LlavaBackbone):
    """Hugging Face VipLLaVA: CLIP tower, multi-layer features, ``multi_modal_projector`` with a LayerNorm."""

    family = "vipllava"
    model_types = ("vipllava",)
    feature_strategy = "default"
