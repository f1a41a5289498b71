"""LLaVA-OneVision family: ``LlavaOnevisionForConditionalGeneration`` (SigLIP tower, Qwen2 LLM, any-resolution).

The tiling is LLaVA-NeXT's (the parent adapter) with two differences the model makes: packed tiles are
pooled down when they exceed ``vision_aspect_ratio`` (``anyres_max_N``), and images of a multi-image sample
are not tiled (the processor's ``batch_num_images`` says which). The guard's own requests are tiled as
single images, so guarded ``generate`` takes one image per request; ``wrap()`` follows the processor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from psaguard.backbones.llava_next import LlavaNextBackbone
from psaguard.backbones.registry import register_backbone

__all__ = ["LlavaOnevisionBackbone"]


@register_backbone
class LlavaOnevisionBackbone(LlavaNextBackbone):
    """Hugging Face LLaVA-OneVision: NeXT-style tiles, ``vision_aspect_ratio`` pooling, multi-image without tiles."""

    family = "llava_onevision"
    model_types = ("llava_onevision",)
    image_input_names = ("image_sizes", "batch_num_images")
    multi_image_requests: ClassVar[bool] = False

    def preprocess(self, processor, images):  # type: ignore[no-untyped-def]
        inputs = super().preprocess(processor, images)
        return {**inputs, "batch_num_images": torch.ones(len(images), dtype=torch.long)}  # each image alone

    def _pack(self, per_image: list[torch.Tensor], image_sizes: torch.Tensor) -> list[torch.Tensor]:
        packed, _ = self._parts.pack_image_features(
            per_image,
            image_sizes,
            image_newline=self._parts.image_newline,
            vision_aspect_ratio=self.config.vision_aspect_ratio,
        )
        return list(packed)

    def _tiles_per_image(self, image_sizes: torch.Tensor, image_kwargs: Mapping[str, torch.Tensor]) -> list[int]:
        # Imported here: importing the modeling module adds warning filters, and `import psaguard` must
        # change nothing global (tests/test_packaging.py).
        from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

        config = self.config
        batch_num_images = image_kwargs.get("batch_num_images")
        counts = [1] * len(image_sizes) if batch_num_images is None else [int(n) for n in batch_num_images]
        alone = [n == 1 for n in counts for _ in range(n)]
        return [
            image_size_to_num_patches(
                image_size=size, grid_pinpoints=config.image_grid_pinpoints, patch_size=config.vision_config.image_size
            )
            if tiled
            else 1
            for size, tiled in zip(image_sizes, alone)
        ]
