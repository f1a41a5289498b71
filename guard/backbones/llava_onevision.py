"""LLaVA-OneVision family: ``LlavaOnevisionForConditionalGeneration`` (SigLIP tower, Qwen2 LLM, any-resolution).

LLaVA-NeXT's adapter (the parent class); the model pools packed tiles past ``vision_aspect_ratio`` itself.
The one override: images of a multi-image sample are not tiled (``batch_num_images`` says which), so an
image's tile count is 1 there (:meth:`LlavaOnevisionBackbone.tile_counts`). The guard preprocesses every
image alone (tiled), as its own sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from psaguard.backbones.encoder_only import EncoderOnlyBackbone
from psaguard.backbones.llava_next import LlavaNextBackbone
from psaguard.backbones.registry import register_backbone

__all__ = ["EncoderOnlyLlavaOnevisionBackbone", "LlavaOnevisionBackbone"]


@register_backbone
class LlavaOnevisionBackbone(LlavaNextBackbone):
    """Hugging Face LLaVA-OneVision: NeXT-style tiles, ``vision_aspect_ratio`` pooling, multi-image without tiles."""

    family = "llava_onevision"
    model_types = ("llava_onevision",)
    unjudged_input_names = ("pixel_values_videos", "image_sizes_videos")  # the PSA-VLM head judges images

    def tile_counts(self, tiles: int, image_inputs: dict[str, torch.Tensor], lengths: Sequence[int]) -> list[int]:
        counts = image_inputs.get("batch_num_images")
        counts = [1] * len(image_inputs["image_sizes"]) if counts is None else [int(n) for n in counts]
        alone = [n == 1 for n in counts for _ in range(n)]
        return [self._tiles(size) if tiled else 1 for size, tiled in zip(image_inputs["image_sizes"], alone)]


@register_backbone
class EncoderOnlyLlavaOnevisionBackbone(EncoderOnlyBackbone, LlavaOnevisionBackbone):
    """Classifier-only: the SigLIP tower and token embeddings; fingerprints as ``'llava_onevision'``."""
