"""LLaVA with a Pixtral vision tower (the pixtral-12b hub layout): native aspect ratios, row-break image runs.

``LlavaForConditionalGeneration`` with ``vision_config.model_type == "pixtral"``: the tower takes each image
at its own (patch-aligned) size and returns all images' patches in one sequence; the processor writes per
patch row ``[IMG] * columns + [IMG_BREAK]`` with the last break replaced by ``[IMG_END]``. Each image's
H x W grid is pooled onto the safety projector's square grid (``vision_config.image_size / patch_size``
per side), so a guard classifies any aspect ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import nn

from psaguard.backbones.base import VisionFeatures, pool_to_square_grid, unwrap_model
from psaguard.backbones.llava import LlavaBackbone, image_processor_outputs
from psaguard.backbones.registry import register_backbone
from psaguard.errors import InvalidInputError, ProcessorError

__all__ = ["LlavaPixtralBackbone"]

_TOWER_TYPE = "pixtral"


@register_backbone
class LlavaPixtralBackbone(LlavaBackbone):
    """LLaVA with a Pixtral tower: per-image patch grids, ``[IMG_BREAK]`` / ``[IMG_END]`` in the image runs."""

    family = "llava_pixtral"
    model_types = ("llava",)
    image_input_names = ("image_sizes",)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        vision = self.config.vision_config
        self._patch = int(vision.patch_size)
        self._side = int(vision.image_size) // self._patch
        self._num_patches = self._side * self._side
        self._break_id: int | None = None
        self._end_id: int | None = None

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        vision = getattr(getattr(unwrap_model(model), "config", None), "vision_config", None)
        return super().supports(model) and getattr(vision, "model_type", None) == _TOWER_TYPE

    def check_processor(self, processor: Any) -> None:
        """Check ``processor`` and read its row-break and end-of-image token ids (the model's config has none)."""
        super().check_processor(processor)
        tokenizer = getattr(processor, "tokenizer", processor)
        ids = [getattr(processor, name, None) for name in ("image_break_token_id", "image_end_token_id")]
        if None in ids or tokenizer.unk_token_id in ids:
            raise ProcessorError(
                f"{type(processor).__name__} has no [IMG_BREAK] / [IMG_END] token ids: a LLaVA model with a Pixtral "
                "tower needs a Pixtral processor"
            )
        self._break_id, self._end_id = (int(i) for i in ids)

    def preprocess(self, processor: Any, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        out = image_processor_outputs(processor, images, self.family)
        pixel_values = torch.as_tensor(out["pixel_values"])
        if pixel_values.dim() != 4 or out.get("image_sizes") is None:
            raise ProcessorError(
                f"the processor gives pixel_values {tuple(pixel_values.shape)} without image_sizes, but a LLaVA model "
                "with a Pixtral tower takes images at their own size: the processor belongs to another model"
            )
        return {"pixel_values": pixel_values, "image_sizes": torch.as_tensor(out["image_sizes"])}

    def encode_images(self, pixel_values: torch.Tensor, **image_kwargs: torch.Tensor) -> VisionFeatures:
        image_sizes = image_kwargs.get("image_sizes")
        if image_sizes is None or pixel_values.dim() != 4 or len(image_sizes) != len(pixel_values):
            raise InvalidInputError(
                "a Pixtral tower needs pixel_values (B, 3, H, W) and image_sizes from its processor"
            )
        image_sizes = torch.as_tensor(image_sizes).cpu()
        grids = [(int(h) // self._patch, int(w) // self._patch) for h, w in image_sizes.tolist()]
        hidden = self._tower_hidden_states(pixel_values, image_sizes=image_sizes)
        selected = self._select(hidden).squeeze(0)  # (sum of H_i * W_i, C): every image's patches in order
        if selected.shape[0] != sum(h * w for h, w in grids):
            raise InvalidInputError(f"the tower returned {selected.shape[0]} patches for image grids {grids}")
        pieces = torch.split(selected, [h * w for h, w in grids])
        patches = torch.stack(
            [pool_to_square_grid(piece.reshape(h, w, -1), self._side) for piece, (h, w) in zip(pieces, grids)]
        )
        return VisionFeatures(
            patches=patches, selected=selected, tiles=tuple(h * w for h, w in grids), image_sizes=image_sizes
        )

    def project(self, features: VisionFeatures) -> list[torch.Tensor]:
        if features.tiles is None:
            raise InvalidInputError("Pixtral-tower features must carry each image's patch count")
        return list(torch.split(self._project(features.selected), list(features.tiles)))

    def image_runs(self, features: VisionFeatures, image_embeds: Sequence[torch.Tensor]) -> list[list[int]]:
        """Per patch row ``[IMG] * columns + [IMG_BREAK]``, the last break replaced by ``[IMG_END]``."""
        if self._break_id is None or self._end_id is None or features.image_sizes is None:
            raise ProcessorError(
                "the Pixtral adapter needs its processor's token ids (check_processor) and image_sizes"
            )
        runs = []
        for (height, width), embeds in zip(features.image_sizes.tolist(), image_embeds):
            rows, columns = int(height) // self._patch, int(width) // self._patch
            if rows * columns != len(embeds):
                raise InvalidInputError(f"a {rows} x {columns} patch grid cannot hold {len(embeds)} embeddings")
            run = [token for _ in range(rows) for token in (*[self.image_token_id] * columns, self._break_id)]
            run[-1] = self._end_id
            runs.append(run)
        return runs
