"""LLaVA-NeXT family: ``LlavaNextForConditionalGeneration`` (any-resolution tiles, ``image_newline``).

An image becomes a base (global) tile plus a grid of high-resolution tiles chosen from
``config.image_grid_pinpoints``; ``get_image_features`` unpads, projects and packs them. LLaVA-1.5's adapter
(the parent class) with the tiling as overrides: the safety projector reads each image's base tile
(:attr:`view_tile` 0), the same square grid a LLaVA-1.5 guard sees; an image's tile count follows from its
size (:meth:`LlavaNextBackbone.tile_counts`; its packed embeddings do not say it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from psaguard.backbones.generic_processor import RUNS
from psaguard.backbones.llava import LlavaBackbone
from psaguard.backbones.registry import register_backbone

__all__ = ["LlavaNextBackbone"]


@register_backbone
class LlavaNextBackbone(LlavaBackbone):
    """Hugging Face LLaVA-NeXT: CLIP-style tower over tiles, ``multi_modal_projector``, ``image_newline``."""

    family = "llava_next"
    image_input_names = ("image_sizes", RUNS)
    model_types = ("llava_next",)
    view_tile = 0
    required_image_inputs = ("image_sizes",)

    def tile_counts(self, tiles: int, image_inputs: dict[str, torch.Tensor], lengths: Sequence[int]) -> list[int]:
        """Each image's tiles, from its size and the model's grid pinpoints (as the model counts them)."""
        return [self._tiles(size) for size in image_inputs["image_sizes"]]

    def _tiles(self, image_size: Any) -> int:
        # Imported here: importing the modeling module adds warning filters, and `import psaguard` must
        # change nothing global (tests/test_packaging.py).
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        pinpoints, side = self.config.image_grid_pinpoints, self.config.vision_config.image_size
        return image_size_to_num_patches(image_size=image_size, grid_pinpoints=pinpoints, patch_size=side)
