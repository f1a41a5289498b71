"""Idefics3 and SmolVLM: ``Idefics3ForConditionalGeneration`` / ``SmolVLMForConditionalGeneration``.

The image processor resizes each image, cuts it into a ``rows x cols`` grid of square tiles when it is
larger than one tile, and appends a global view of the whole image; a batch's samples are padded with
all-zero tiles, and ``pixel_attention_mask`` marks padded pixels. The vision tower encodes every real tile
(padding tiles dropped, as the model drops them), the connector pixel-shuffles each tile's patch grid and
projects it. The processor writes, per tile, ``<fake_token_around_image><row_i_col_j>`` + image tokens and,
for the global view, ``<fake_token_around_image><global-img>`` + image tokens + ``<fake_token_around_image>``
(the run is the processor's own ``replace_image_token`` text, tokenized). The safety projector sees the
global view's patch grid. Its processor reads a flat list of images as one sample, so the adapter nests
them, one image per sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from PIL import Image
from torch import nn

from psaguard.backbones.base import Backbone, VisionFeatures
from psaguard.backbones.encoder_only import EncoderOnlyBackbone
from psaguard.backbones.llava import image_processor_outputs, special_token_id
from psaguard.backbones.registry import register_backbone
from psaguard.errors import InvalidInputError, ProcessorError
from psaguard.tokenization import tokenizer_of

__all__ = ["EncoderOnlyIdefics3Backbone", "EncoderOnlySmolVLMBackbone", "Idefics3Backbone", "SmolVLMBackbone"]


@dataclass(frozen=True)
class _RunIds:
    """What the adapter reads from the processor: each image's run by tile grid, and the run's tags."""

    run: Any  # (rows, cols) -> tuple of token ids
    global_tag: int
    tile_tags: dict[int, tuple[int, int]]  # <row_i_col_j> id -> (i, j)


@register_backbone
class Idefics3Backbone(Backbone):
    """Hugging Face Idefics3: tiles plus a global view, pixel shuffle, tagged tiles in the image run."""

    family = "idefics3"
    model_types = ("idefics3",)
    image_input_names = ("pixel_attention_mask", "rows", "cols")
    language_model_name = "text_model"
    unquantized_modules = ("model.vision_model", "model.connector", "lm_head")

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._parts = getattr(self.base_model, "model", self.base_model)
        vision = self.config.vision_config
        self._tile_side = int(vision.image_size)
        self._patch_side = int(vision.patch_size)
        grid = self._tile_side // self._patch_side
        self._num_patches = grid * grid
        self._ids: _RunIds | None = None

    @property
    def vision_tower(self) -> nn.Module:
        # The full model calls it vision_model; a classifier-only EncoderOnlyModel holds it as vision_tower.
        return self._parts.vision_model if hasattr(self._parts, "vision_model") else self._parts.vision_tower

    @property
    def vision_hidden_size(self) -> int:
        return self.config.vision_config.hidden_size

    @property
    def num_patches(self) -> int:
        return self._num_patches

    def read_processor(self, processor: Any) -> None:
        """The processor's image run per tile grid (its ``replace_image_token``), and the ids of its tags."""
        tokenizer = tokenizer_of(processor)
        replace = getattr(processor, "replace_image_token", None)
        if not callable(replace) or not hasattr(processor, "image_seq_len"):
            raise ProcessorError(f"{type(processor).__name__} is not an {self.family} processor")
        if special_token_id(tokenizer, "<image>", self.family) != self.image_token_id:
            raise ProcessorError("the processor's <image> is not the model's image token: it belongs to another model")

        @lru_cache(maxsize=64)
        def run(rows: int, cols: int) -> tuple[int, ...]:
            text = replace({"rows": [[rows]], "cols": [[cols]]}, 0)
            return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])

        try:
            run(0, 0)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ProcessorError(f"{type(processor).__name__} cannot write an {self.family} image run: {err}") from err
        tags = {
            special_token_id(tokenizer, f"<row_{i}_col_{j}>", self.family): (i, j)
            for i in range(1, 7)
            for j in range(1, 7)
        }
        self._ids = _RunIds(
            run=run, global_tag=special_token_id(tokenizer, "<global-img>", self.family), tile_tags=tags
        )

    # ------------------------------------------------------------------ vision
    def preprocess(self, processor: Any, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        # One sample per image: the image processor reads a flat list as the images of one sample.
        out = image_processor_outputs(processor, [[image] for image in images], self.family, return_row_col_info=True)
        pixel_values = torch.as_tensor(out["pixel_values"])
        side = self._tile_side
        if pixel_values.dim() != 5 or tuple(pixel_values.shape[-2:]) != (side, side) or "rows" not in out:
            raise ProcessorError(
                f"the processor gives pixel_values {tuple(pixel_values.shape)} without tile grids, but an "
                f"{self.family!r} model takes tiles of {side} x {side} pixels: the processor belongs to another model"
            )
        return {
            "pixel_values": pixel_values,
            "pixel_attention_mask": torch.as_tensor(out["pixel_attention_mask"]),
            "rows": torch.tensor([r for sample in out["rows"] for r in sample]),
            "cols": torch.tensor([c for sample in out["cols"] for c in sample]),
        }

    def encode_images(self, pixel_values: torch.Tensor, **image_kwargs: torch.Tensor) -> VisionFeatures:
        rows, cols = image_kwargs.get("rows"), image_kwargs.get("cols")
        if rows is None or cols is None or pixel_values.dim() != 5:
            raise InvalidInputError(
                f"{self.family} needs pixel_values (samples, tiles, 3, H, W) and rows/cols per image"
            )
        grids = torch.stack([torch.as_tensor(rows).flatten(), torch.as_tensor(cols).flatten()], dim=1).long()
        tiles = [int(r * c) + 1 for r, c in grids.tolist()]
        flat = pixel_values.flatten(0, 1)
        real = (flat != 0).flatten(1).any(dim=1)  # padding tiles are all zeros, as the model detects them
        if int(real.sum()) != sum(tiles):
            raise InvalidInputError(
                f"rows/cols give {sum(tiles)} tiles but pixel_values hold {int(real.sum())}: they do not belong "
                "together"
            )
        mask = image_kwargs.get("pixel_attention_mask")
        mask = torch.ones(flat.shape[0], *flat.shape[-2:], dtype=torch.bool) if mask is None else mask.flatten(0, 1)
        tower = self.vision_tower
        param = next(tower.parameters())
        pixels, mask = flat[real].to(param.device, param.dtype), mask[real].to(param.device).bool()
        size = self._patch_side
        patch_mask = mask.unfold(1, size, size).unfold(2, size, size).sum(dim=(-1, -2)) > 0
        hidden = tower(pixel_values=pixels, patch_attention_mask=patch_mask, return_dict=True).last_hidden_state
        last = torch.tensor(tiles).cumsum(0) - 1  # each image's global view comes last
        return VisionFeatures(patches=hidden[last], selected=hidden, tiles=tuple(tiles), tile_grids=grids)

    def project(self, features: VisionFeatures) -> list[torch.Tensor]:
        """One ``(tiles * tokens per tile, D)`` tensor per image: its tiles' embeddings in order."""
        if features.tiles is None:
            raise InvalidInputError(f"{self.family} features must carry the tile count per image")
        connector = self._parts.connector
        param = next(connector.parameters())
        projected = connector(features.selected.to(param.device, param.dtype))
        return [chunk.flatten(0, 1) for chunk in torch.split(projected, list(features.tiles))]

    # ------------------------------------------------------------------ the language model's input
    def image_runs(self, features: VisionFeatures, image_embeds: Sequence[torch.Tensor]) -> list[list[int]]:
        if features.tile_grids is None:
            raise InvalidInputError(f"{self.family} features must carry each image's tile grid")
        ids = self._read_ids()
        return [list(ids.run(int(r), int(c))) for r, c in features.tile_grids.tolist()]

    def image_inputs_from_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """``rows`` and ``cols`` per image: the processor drops them, but each run's tile tags spell them."""
        ids = self._read_ids()
        grids: list[tuple[int, int]] = []
        for row, keep in zip(input_ids.tolist(), attention_mask.tolist()):
            rows = cols = 0
            for token, kept in zip(row, keep):
                if not kept:
                    continue
                if token in ids.tile_tags:
                    i, j = ids.tile_tags[token]
                    rows, cols = max(rows, i), max(cols, j)
                elif token == ids.global_tag:  # the global view closes an image
                    grids.append((rows, cols))
                    rows = cols = 0
        if not grids:
            return {}
        return {"rows": torch.tensor([g[0] for g in grids]), "cols": torch.tensor([g[1] for g in grids])}

    def _read_ids(self) -> _RunIds:
        if self._ids is None:
            raise ProcessorError(f"the {self.family} adapter has not read its processor (check_processor)")
        return self._ids


@register_backbone
class SmolVLMBackbone(Idefics3Backbone):
    """Hugging Face SmolVLM: Idefics3's layout, with its own processor's run text."""

    family = "smolvlm"
    model_types = ("smolvlm",)


@register_backbone
class EncoderOnlyIdefics3Backbone(EncoderOnlyBackbone, Idefics3Backbone):
    """Classifier-only: the tower and token embeddings alone; fingerprints as ``'idefics3'``, like the full model."""

    tower_checkpoint_prefixes = ("model.vision_model.",)
    embedding_checkpoint_keys = ("model.text_model.embed_tokens.weight",)


@register_backbone
class EncoderOnlySmolVLMBackbone(EncoderOnlyIdefics3Backbone, SmolVLMBackbone):
    """Classifier-only: the tower and token embeddings alone; fingerprints as ``'smolvlm'``, like the full model."""
