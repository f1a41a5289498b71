"""LLaVA-OneVision family: ``LlavaOnevisionForConditionalGeneration`` (SigLIP tower, Qwen2 LLM, any-resolution).

LLaVA-NeXT's adapter (the parent class); the model pools packed tiles past ``vision_aspect_ratio`` itself.
The one override: images of a multi-image sample are not tiled (``batch_num_images`` says which). The guard
classifies every image alone (tiled; the safety projector reads the base tile either way) and, for guarded
generation, preprocesses a multi-image request as the model's processor does
(:meth:`LlavaOnevisionBackbone.preprocess_requests`), an untiled image counting one tile
(:meth:`LlavaOnevisionBackbone.tile_counts`); its run is one image token per embedding either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from psaguard.backbones.generic_processor import RUNS, image_processor_outputs
from psaguard.backbones.llava_next import LlavaNextBackbone
from psaguard.backbones.registry import register_backbone

__all__ = ["LlavaOnevisionBackbone"]


@register_backbone
class LlavaOnevisionBackbone(LlavaNextBackbone):
    """Hugging Face LLaVA-OneVision: NeXT-style tiles, ``vision_aspect_ratio`` pooling, multi-image without tiles."""

    family = "llava_onevision"
    image_input_names = ("image_sizes", "batch_num_images", RUNS)
    model_types = ("llava_onevision",)
    unjudged_input_names = ("pixel_values_videos", "image_sizes_videos")  # the PSA-VLM head judges images

    def preprocess_requests(
        self, processor: Any, images: Sequence[Image.Image], images_per_request: Sequence[int]
    ) -> dict[str, torch.Tensor]:
        """Images grouped as the model's processor groups a batch: a multi-image request's images untiled."""
        if all(count == 1 for count in images_per_request):
            return self.preprocess(processor, images)
        starts = [sum(images_per_request[:i]) for i in range(len(images_per_request))]
        nested = [list(images[start : start + count]) for start, count in zip(starts, images_per_request)]
        out = image_processor_outputs(processor, nested, self.family)
        grouping = torch.as_tensor(list(images_per_request), dtype=torch.long)
        return {"pixel_values": out["pixel_values"], "image_sizes": out["image_sizes"], "batch_num_images": grouping}

    def tile_counts(self, tiles: int, image_inputs: dict[str, torch.Tensor], lengths: Sequence[int]) -> list[int]:
        counts = image_inputs.get("batch_num_images")
        counts = [1] * len(image_inputs["image_sizes"]) if counts is None else [int(n) for n in counts]
        alone = [n == 1 for n in counts for _ in range(n)]
        return [self._tiles(size) if tiled else 1 for size, tiled in zip(image_inputs["image_sizes"], alone)]
