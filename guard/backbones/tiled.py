"""What adapters of tiling families share: square tiles plus a global view, stacked across images.

Their image processor (``crop_to_patches``) cuts each image into up to ``max_patches`` square tiles on the
grid closest to its aspect ratio and, when there is more than one, appends a thumbnail of the whole image;
all images' tiles are stacked in one ``pixel_values`` and the count per image is ``num_patches``. The
model projects every tile to the same number of embeddings and reads an image's tiles in order, from one
tensor of features. The safety projector sees the last tile of each image: its global view.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import nn

from psaguard.backbones.base import VisionFeatures
from psaguard.backbones.llava import LlavaBackbone, image_processor_outputs
from psaguard.errors import InvalidInputError, ProcessorError
from psaguard.injection import features_as_tensor

__all__ = ["TiledBackbone"]


class TiledBackbone(LlavaBackbone):
    """Base of tiling adapters: preprocessing, the one vision pass, per-image features, tile counts from ids.

    Subclasses give the embeddings per tile (:attr:`tokens_per_tile`), project tiles
    (:meth:`_project_tiles`), say which tokens open and close an image's run (:meth:`_run_bounds`) and lay
    out the run (:meth:`image_runs`).
    """

    image_input_names = ("num_patches",)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._processor_ids: Any = None
        """The token ids :meth:`read_processor` takes from the processor's tokenizer."""

    @property
    @abstractmethod
    def tokens_per_tile(self) -> int:
        """Image embeddings (and image tokens) the model makes of one tile."""

    @abstractmethod
    def _project_tiles(self, selected: torch.Tensor) -> torch.Tensor:
        """(tiles, N, C) selected tower features -> (tiles, tokens_per_tile, D) image embeddings."""

    @abstractmethod
    def _run_bounds(self) -> tuple[int, int]:
        """(first, last) token ids of every image's run."""

    def preprocess(self, processor: Any, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        # The family's processor always asks its image processor for tiles (crop_to_patches=True).
        out = image_processor_outputs(processor, images, self.family, crop_to_patches=True)
        pixel_values = torch.as_tensor(out["pixel_values"])
        side = self._image_side
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[-2:]) != (side, side) or "num_patches" not in out:
            raise ProcessorError(
                f"the processor gives pixel_values {tuple(pixel_values.shape)} without tile counts, but a "
                f"{self.family!r} model takes tiles of {side} x {side} pixels: the processor belongs to another model"
            )
        return {"pixel_values": pixel_values, "num_patches": torch.as_tensor(out["num_patches"])}

    def encode_images(self, pixel_values: torch.Tensor, **image_kwargs: torch.Tensor) -> VisionFeatures:
        num_patches = image_kwargs.get("num_patches")
        if num_patches is None or pixel_values.dim() != 4:
            raise InvalidInputError(f"{self.family} needs pixel_values (tiles, 3, H, W) and num_patches per image")
        tiles = [int(n) for n in torch.as_tensor(num_patches).flatten()]
        if not tiles or min(tiles) < 1 or sum(tiles) != pixel_values.shape[0]:
            raise InvalidInputError(f"num_patches {tiles} do not add up to the {pixel_values.shape[0]} tiles given")
        flat = super().encode_images(pixel_values)
        last = torch.tensor(tiles).cumsum(0) - 1  # each image's global view comes last
        return VisionFeatures(patches=flat.patches[last], selected=flat.selected, tiles=tuple(tiles))

    def project(self, features: VisionFeatures) -> list[torch.Tensor]:
        """One ``(tiles * tokens_per_tile, D)`` tensor per image: its tiles' embeddings in order."""
        if features.tiles is None:
            raise InvalidInputError(f"{self.family} features must carry the tile count per image")
        projected = self._project_tiles(features.selected)
        return [chunk.flatten(0, 1) for chunk in torch.split(projected, list(features.tiles))]

    def model_image_inputs(self, image_features: Sequence[torch.Tensor], input_ids: torch.Tensor) -> dict[str, Any]:
        return features_as_tensor(image_features, input_ids)

    def image_inputs_from_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """``num_patches``: the processor drops it from its output, but each image's run holds
        ``tokens_per_tile`` image tokens per tile."""
        first, last = self._run_bounds()
        counts: list[int] = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            inside = None
            for token, keep in zip(ids, mask):
                if not keep:
                    continue
                if token == first:
                    inside = 0
                elif token == last and inside is not None:
                    counts.append(inside)
                    inside = None
                elif token == self.image_token_id and inside is not None:
                    inside += 1
        if any(n == 0 or n % self.tokens_per_tile for n in counts):
            raise InvalidInputError(
                f"image runs hold {counts} image tokens, not multiples of {self.tokens_per_tile} per tile: "
                "input_ids do not come from this model's processor"
            )
        return {"num_patches": torch.tensor([n // self.tokens_per_tile for n in counts])} if counts else {}

    def _read_ids(self) -> Any:
        """What :meth:`read_processor` stored; :class:`ProcessorError` if it has not run yet."""
        if self._processor_ids is None:
            raise ProcessorError(f"the {self.family} adapter has not read its processor (check_processor)")
        return self._processor_ids
