"""LLaVA-NeXT family: ``LlavaNextForConditionalGeneration`` (any-resolution tiles, ``image_newline``).

An image becomes a base (global) tile plus a grid of high-resolution tiles chosen from
``config.image_grid_pinpoints``. The safety projector sees the base tile only, which is the same square
grid a LLaVA-1.5 guard sees; the model's own projector sees every tile, packed as the model packs them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from psaguard.backbones.base import VisionFeatures
from psaguard.backbones.llava import LlavaBackbone, image_processor_outputs
from psaguard.backbones.registry import register_backbone
from psaguard.errors import InvalidInputError, ProcessorError

__all__ = ["LlavaNextBackbone"]


@register_backbone
class LlavaNextBackbone(LlavaBackbone):
    """Hugging Face LLaVA-NeXT: CLIP-style tower over tiles, ``multi_modal_projector``, ``image_newline``.

    Sizes, token embeddings and the feature selection are LLaVA-1.5's (the parent class); only the tiling
    differs.
    """

    family = "llava_next"
    model_types = ("llava_next",)
    image_input_names = ("image_sizes",)

    def preprocess(self, processor: Any, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        return self._checked(image_processor_outputs(processor, images, self.family))

    def _checked(self, out: Any) -> dict[str, torch.Tensor]:
        """``pixel_values`` and ``image_sizes`` of an image processor's output; ProcessorError if it has no tiles."""
        # pixel_values: (B, max tiles, 3, H, W), zero-padded past each image's own tile count.
        pixel_values = torch.as_tensor(out["pixel_values"])
        if pixel_values.dim() != 5 or out.get("image_sizes") is None:
            raise ProcessorError(
                f"the processor gives pixel_values {tuple(pixel_values.shape)} without tiles and image_sizes, but a "
                f"{self.family!r} model takes any-resolution tiles: the processor belongs to another model"
            )
        return {"pixel_values": pixel_values, "image_sizes": torch.as_tensor(out["image_sizes"])}

    def encode_images(self, pixel_values: torch.Tensor, **image_kwargs: torch.Tensor) -> VisionFeatures:
        image_sizes = image_kwargs.get("image_sizes")
        if image_sizes is None or pixel_values.dim() != 5:
            raise InvalidInputError(
                "LLaVA-NeXT needs pixel_values (B, tiles, 3, H, W) and image_sizes from its image processor"
            )
        tiles = self._tiles_per_image(image_sizes, image_kwargs)
        if len(tiles) != pixel_values.shape[0] or max(tiles) > pixel_values.shape[1]:
            raise InvalidInputError(f"image_sizes imply {tiles} tiles for pixel_values {tuple(pixel_values.shape)}")
        # Drop the padding tiles first so the tower runs once, over real tiles only (as the model does).
        stacked = torch.cat([pixels[:count] for pixels, count in zip(pixel_values, tiles)])
        flat = super().encode_images(stacked)
        base_rows = [sum(tiles[:i]) for i in range(len(tiles))]  # each image's first tile is its global view
        return VisionFeatures(
            patches=flat.patches[base_rows],
            selected=flat.selected,
            tiles=tuple(tiles),
            image_sizes=image_sizes.cpu(),
        )

    def project(self, features: VisionFeatures) -> list[torch.Tensor]:
        """One ``(L_i, D)`` tensor per image: projected tiles, unpadded and packed with ``image_newline``."""
        if features.tiles is None or features.image_sizes is None:
            raise InvalidInputError("LLaVA-NeXT features must carry tiles and image_sizes")
        projected = self._project(features.selected)
        per_image = list(torch.split(projected, list(features.tiles), dim=0))
        return self._pack(per_image, features.image_sizes)

    def _pack(self, per_image: list[torch.Tensor], image_sizes: torch.Tensor) -> list[torch.Tensor]:
        """The model's own unpadding and ``image_newline`` packing of each image's projected tiles."""
        packed, _ = self._parts.pack_image_features(
            per_image,
            image_sizes,
            vision_feature_select_strategy=self._strategy,
            image_newline=self._parts.image_newline,
        )
        return list(packed)

    def _tiles_per_image(self, image_sizes: torch.Tensor, image_kwargs: Mapping[str, torch.Tensor]) -> list[int]:
        # Imported here: importing the modeling module adds warning filters, and `import psaguard` must
        # change nothing global (tests/test_packaging.py).
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        config = self.config
        return [
            image_size_to_num_patches(
                image_size=size, grid_pinpoints=config.image_grid_pinpoints, patch_size=config.vision_config.image_size
            )
            for size in image_sizes
        ]
