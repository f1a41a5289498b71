"""LLaVA-OneVision family: ``LlavaOnevisionForConditionalGeneration`` (SigLIP tower, Qwen2 LLM, any-resolution).

The tiling is LLaVA-NeXT's (the parent adapter) with two differences the model makes: packed tiles are
pooled down when they exceed ``vision_aspect_ratio`` (``anyres_max_N``), and images of a multi-image sample
are not tiled (the processor's ``batch_num_images`` says which). The guard classifies every image alone
(tiled; the safety projector reads the base tile either way) and, for a multi-image request, keeps only
each image's base tile for the answer (:meth:`LlavaOnevisionBackbone.request_features`), as the model's
processor does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from psaguard.backbones.encoder_only import EncoderOnlyBackbone
from psaguard.backbones.llava import image_processor_outputs
from psaguard.backbones.llava_next import LlavaNextBackbone
from psaguard.backbones.registry import register_backbone

__all__ = ["EncoderOnlyLlavaOnevisionBackbone", "LlavaOnevisionBackbone"]


@register_backbone
class LlavaOnevisionBackbone(LlavaNextBackbone):
    """Hugging Face LLaVA-OneVision: NeXT-style tiles, ``vision_aspect_ratio`` pooling, multi-image without tiles."""

    family = "llava_onevision"
    model_types = ("llava_onevision",)
    image_input_names = ("image_sizes", "batch_num_images")
    unjudged_input_names = ("pixel_values_videos", "image_sizes_videos")  # the PSA-VLM head judges images

    def preprocess(self, processor: Any, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        return self.preprocess_requests(processor, images, [1] * len(images))  # each image alone: tiled

    def preprocess_requests(
        self, processor: Any, images: Sequence[Image.Image], images_per_request: Sequence[int]
    ) -> dict[str, torch.Tensor]:
        """Images grouped as the model's processor groups a batch: a multi-image request's images untiled."""
        starts = [sum(images_per_request[:i]) for i in range(len(images_per_request))]
        nested = [list(images[start : start + count]) for start, count in zip(starts, images_per_request)]
        inputs = self._checked(image_processor_outputs(processor, nested, self.family))
        return {**inputs, "batch_num_images": torch.as_tensor(list(images_per_request), dtype=torch.long)}

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


@register_backbone
class EncoderOnlyLlavaOnevisionBackbone(EncoderOnlyBackbone, LlavaOnevisionBackbone):
    """Classifier-only: the SigLIP tower and token embeddings; fingerprints as ``'llava_onevision'``."""
