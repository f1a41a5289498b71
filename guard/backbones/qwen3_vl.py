"""Qwen3-VL family: ``Qwen3VLForConditionalGeneration``: Qwen2-VL's inputs plus DeepStack visual features.

The DeepStack features (merged outputs of the tower's intermediate blocks, added to the image positions'
hidden states in the first language-model layers) come with the embeddings from ``get_image_features``; the
generic adapter hands them back per image with zero rows for the safety tokens, so the deepstack layers add
nothing to them. Everything else is Qwen2-VL's adapter (the parent class); only the family name differs.
"""

from __future__ import annotations

from psaguard.backbones.qwen2_vl import Qwen2VLBackbone
from psaguard.backbones.registry import register_backbone

__all__ = ["Qwen3VLBackbone"]


@register_backbone
class Qwen3VLBackbone(Qwen2VLBackbone):
    """Hugging Face Qwen3-VL: Qwen2-VL's inputs and M-RoPE handling, DeepStack features with the embeddings."""

    family = "qwen3_vl"
    model_types = ("qwen3_vl",)
