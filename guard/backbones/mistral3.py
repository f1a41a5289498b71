"""Mistral3 family: ``Mistral3ForConditionalGeneration`` (Pixtral tower at native aspect ratio, patch merger, Mistral).

The Pixtral tower sees each image at its own size (a multiple of the merged patch, longer side at most
``vision_config.image_size``), so patch grids are not square and differ between images. The model's
projector merges ``spatial_merge_size`` x ``spatial_merge_size`` patches into one embedding, and the
processor writes one ``[IMG]`` per merged patch, ``[IMG_BREAK]`` after each row and ``[IMG_END]`` in place of
the last break. The safety projector sees each image's patch grid pooled onto a fixed square grid
(:func:`~psaguard.backbones.pool_to_square_grid`), recorded in the fingerprint as ``patch_grid``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from psaguard.backbones.base import VisionFeatures, pool_to_square_grid
from psaguard.backbones.encoder_only import EncoderOnlyBackbone
from psaguard.backbones.llava import LlavaBackbone, image_processor_outputs, special_token_id
from psaguard.backbones.registry import register_backbone
from psaguard.errors import InvalidInputError, ProcessorError
from psaguard.tokenization import tokenizer_of

__all__ = ["EncoderOnlyMistral3Backbone", "Mistral3Backbone"]


@register_backbone
class Mistral3Backbone(LlavaBackbone):
    """Hugging Face Mistral3 (Mistral Small 3.x vision): Pixtral tower, patch-merging projector, Mistral LLM.

    Parts and the layer selection are LLaVA's (the parent class); the image sizes, the grid the safety
    projector sees and the row-break layout of the image run are Mistral3's.
    """

    family = "mistral3"
    model_types = ("mistral3",)
    image_input_names = ("image_sizes",)
    max_grid_side: ClassVar[int] = 24
    """Side of the safety projector's grid at most (LLaVA-1.5's 24 x 24, the PSA-VLM paper's): a tower
    allowing larger images is pooled down to it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._strategy = "full"  # Pixtral has no CLS token to drop, and Mistral3 configs name no strategy
        vision = self.config.vision_config
        self._patch = vision.patch_size
        self._step = vision.patch_size * self._merge_size()  # pixels per merged patch (one [IMG])
        self._grid_side = min(vision.image_size // vision.patch_size, self.max_grid_side)
        self._num_patches = self._grid_side**2
        self._break_end: tuple[int, int] | None = None

    def _merge_size(self) -> int:
        """Patches merged per side into one embedding by the model's projector."""
        return self.config.spatial_merge_size

    @property
    def resolution_unit(self) -> tuple[int, int]:
        """The tower's patch and the merged patch the processor rounds image sides to: images keep their size."""
        return self._patch, self._step

    def read_processor(self, processor: Any) -> None:
        """The ids of the row-break and end-of-image tokens (the config records only ``[IMG]``)."""
        tokenizer = tokenizer_of(processor)
        texts = (
            getattr(processor, "image_break_token", "[IMG_BREAK]"),
            getattr(processor, "image_end_token", "[IMG_END]"),
        )
        self._break_end = (
            special_token_id(tokenizer, texts[0], self.family),
            special_token_id(tokenizer, texts[1], self.family),
        )

    def preprocess(self, processor: Any, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        # Resized to multiples of the merged patch, as the Pixtral processor asks its image processor to.
        out = image_processor_outputs(processor, images, self.family, patch_size=self._step)
        pixel_values = torch.as_tensor(out["pixel_values"])
        sizes = out.get("image_sizes")
        if pixel_values.dim() != 4 or sizes is None:
            raise ProcessorError(
                f"the processor gives pixel_values {tuple(pixel_values.shape)} without image_sizes, but a "
                f"{self.family!r} model takes images at their own sizes: the processor belongs to another model"
            )
        return {"pixel_values": pixel_values, "image_sizes": torch.as_tensor(sizes)}

    def encode_images(self, pixel_values: torch.Tensor, **image_kwargs: torch.Tensor) -> VisionFeatures:
        sizes = image_kwargs.get("image_sizes")
        if sizes is None or pixel_values.dim() != 4:
            raise InvalidInputError(f"{self.family} needs pixel_values (B, 3, H, W) and image_sizes from its processor")
        sizes = torch.as_tensor(sizes).cpu().long()
        if sizes.shape != (pixel_values.shape[0], 2) or bool((sizes % self._step).any()):
            raise InvalidInputError(
                f"image_sizes {sizes.tolist()} do not fit pixel_values {tuple(pixel_values.shape)} in multiples of "
                f"{self._step} pixels"
            )
        # The tower packs every image's patches into one sequence (attention stays within each image).
        selected = self._select(self._tower_hidden_states(pixel_values, image_sizes=sizes)).squeeze(0)
        grids = [(int(h) // self._patch, int(w) // self._patch) for h, w in sizes]
        per_image = torch.split(selected, [h * w for h, w in grids])
        patches = [pool_to_square_grid(x.reshape(h, w, -1), self._grid_side) for x, (h, w) in zip(per_image, grids)]
        return VisionFeatures(
            patches=torch.stack(patches), selected=selected, tiles=tuple(h * w for h, w in grids), image_sizes=sizes
        )

    def project(self, features: VisionFeatures) -> list[torch.Tensor]:
        """One ``(rows * columns, D)`` tensor per image: its merged patches, row by row."""
        if features.image_sizes is None:
            raise InvalidInputError(f"{self.family} features must carry image_sizes")
        projector = self._parts.multi_modal_projector
        param = next(projector.parameters())
        merged = projector(features.selected.to(param.device, param.dtype), features.image_sizes)
        return list(torch.split(merged, [rows * cols for rows, cols in self._merged_grids(features)]))

    def image_runs(self, features: VisionFeatures, image_embeds: Sequence[torch.Tensor]) -> list[list[int]]:
        """Per image, rows of ``[IMG]`` each ended by ``[IMG_BREAK]``, the last by ``[IMG_END]``."""
        if self._break_end is None:
            raise ProcessorError(f"the {self.family} adapter has not read its processor (check_processor)")
        image_break, image_end = self._break_end
        runs = []
        for rows, cols in self._merged_grids(features):
            run = ([self.image_token_id] * cols + [image_break]) * rows
            run[-1] = image_end
            runs.append(run)
        return runs

    def _merged_grids(self, features: VisionFeatures) -> list[tuple[int, int]]:
        return [(int(h) // self._step, int(w) // self._step) for h, w in features.image_sizes]


@register_backbone
class EncoderOnlyMistral3Backbone(EncoderOnlyBackbone, Mistral3Backbone):
    """Classifier-only: the tower and token embeddings alone; fingerprints as ``'mistral3'``, like the full model."""
