"""Aya Vision family: ``AyaVisionForConditionalGeneration`` (SigLIP tower over tiles, pixel shuffle, SwiGLU, Cohere2).

The projector pixel-shuffles each tile's patch grid (``downsample_factor`` x ``downsample_factor`` patches
into one token) before its SwiGLU MLP. The chat template writes ``<image>``, which the processor replaces by
``<|START_OF_IMG|>``, then per tile a text marker (``TILE_1`` ... for the crops, ``TILE_GLOBAL`` for the
global view) followed by one ``<|IMG_PATCH|>`` per embedding, then ``<|END_OF_IMG|>``: the template's
placeholder is not the model's image token, and the markers are plain text in the tokenizer's own pieces.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from psaguard.backbones.base import VisionFeatures
from psaguard.backbones.encoder_only import EncoderOnlyBackbone
from psaguard.backbones.llava import special_token_id
from psaguard.backbones.registry import register_backbone
from psaguard.backbones.tiled import TiledBackbone
from psaguard.errors import ProcessorError
from psaguard.tokenization import tokenizer_of

__all__ = ["AyaVisionBackbone", "EncoderOnlyAyaVisionBackbone"]


@dataclass(frozen=True)
class _AyaIds:
    """Token ids the processor writes besides ``<|IMG_PATCH|>``, read from its tokenizer."""

    placeholder: int
    start: int
    end: int
    tile_marker: Any  # (index or None for the global view) -> ids of the marker text


@register_backbone
class AyaVisionBackbone(TiledBackbone):
    """Hugging Face Aya Vision: tiles plus a global view, pixel shuffle, marked tiles in the image run."""

    family = "aya_vision"
    model_types = ("aya_vision",)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        # The projector's pixel shuffle merges factor x factor patches of the tile's square grid into one token.
        self._tile_tokens = (math.isqrt(self._num_patches) // self.config.downsample_factor) ** 2

    @property
    def tokens_per_tile(self) -> int:
        return self._tile_tokens

    @property
    def placeholder_token_id(self) -> int:
        """The chat template's ``<image>`` (read from the processor), not the model's ``<|IMG_PATCH|>``."""
        return self._read_ids().placeholder

    def read_processor(self, processor: Any) -> None:
        """The ids of ``<image>``, the run's start and end tokens, and a tokenizer for the tile markers."""
        tokenizer = tokenizer_of(processor)
        patch = getattr(processor, "img_patch_token", "<|IMG_PATCH|>")
        if special_token_id(tokenizer, patch, self.family) != self.image_token_id:
            raise ProcessorError(f"the processor's {patch!r} is not the model's image token {self.image_token_id}")
        tile, global_tile = (
            getattr(processor, "tile_token", "TILE"),
            getattr(processor, "tile_global_token", "TILE_GLOBAL"),
        )

        @lru_cache(maxsize=64)
        def tile_marker(index: int | None) -> tuple[int, ...]:
            text = global_tile if index is None else f"{tile}_{index}"
            return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])

        self._processor_ids = _AyaIds(
            placeholder=special_token_id(tokenizer, getattr(processor, "image_token", "<image>"), self.family),
            start=special_token_id(
                tokenizer, getattr(processor, "start_of_img_token", "<|START_OF_IMG|>"), self.family
            ),
            end=special_token_id(tokenizer, getattr(processor, "end_of_img_token", "<|END_OF_IMG|>"), self.family),
            tile_marker=tile_marker,
        )

    def _run_bounds(self) -> tuple[int, int]:
        ids = self._read_ids()
        return ids.start, ids.end

    def _project_tiles(self, selected: torch.Tensor) -> torch.Tensor:
        projected = self._project(selected)  # the projector pixel-shuffles, as in AyaVisionModel.get_image_features
        return projected.reshape(selected.shape[0], -1, projected.shape[-1])

    def image_runs(self, features: VisionFeatures, image_embeds: Sequence[torch.Tensor]) -> list[list[int]]:
        """``<|START_OF_IMG|>``, ``TILE_i`` + patches per crop, ``TILE_GLOBAL`` + patches, ``<|END_OF_IMG|>``."""
        ids = self._read_ids()
        runs = []
        for tiles in features.tiles or ():
            patches = [self.image_token_id] * self._tile_tokens
            run = [ids.start]
            for index in [*range(1, tiles), None]:  # a single tile is the global view alone
                run += [*ids.tile_marker(index), *patches]
            runs.append([*run, ids.end])
        return runs


@register_backbone
class EncoderOnlyAyaVisionBackbone(EncoderOnlyBackbone, AyaVisionBackbone):
    """Classifier-only: the tower and token embeddings alone; fingerprints as ``'aya_vision'``, like the full model."""
