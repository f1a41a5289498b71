"""InternVL family: ``InternVLForConditionalGeneration`` (InternViT tower over tiles, pixel shuffle, MLP, Qwen2 LLM).

Each tile's patch grid is pixel-shuffled (``downsample_ratio`` 0.5: 2 x 2 patches become one token of 4x the
channels) and projected, ``image_seq_length`` embeddings per tile. The processor writes an image as
``<img>``, one ``<IMG_CONTEXT>`` per embedding over all its tiles, ``</img>``; the chat template writes one
``<IMG_CONTEXT>`` per image. The model takes the features as one stacked tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from psaguard.backbones.base import VisionFeatures
from psaguard.backbones.encoder_only import EncoderOnlyBackbone
from psaguard.backbones.llava import special_token_id
from psaguard.backbones.registry import register_backbone
from psaguard.backbones.tiled import TiledBackbone
from psaguard.tokenization import tokenizer_of

__all__ = ["EncoderOnlyInternVLBackbone", "InternVLBackbone"]


@register_backbone
class InternVLBackbone(TiledBackbone):
    """Hugging Face InternVL (2.5 / 3 in the ``-hf`` layout): tiles, pixel shuffle, ``<img>...</img>`` runs."""

    family = "internvl"
    model_types = ("internvl",)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._ratio = self.config.downsample_ratio
        self._tile_tokens = int(math.isqrt(self._num_patches) * self._ratio) ** 2

    @property
    def tokens_per_tile(self) -> int:
        return self._tile_tokens

    def read_processor(self, processor: Any) -> None:
        """The ids of ``<img>`` and ``</img>`` (the config records only ``<IMG_CONTEXT>``)."""
        tokenizer = tokenizer_of(processor)
        texts = (getattr(processor, "start_image_token", "<img>"), getattr(processor, "end_image_token", "</img>"))
        self._processor_ids = tuple(special_token_id(tokenizer, text, self.family) for text in texts)

    def _run_bounds(self) -> tuple[int, int]:
        return self._read_ids()

    def _project_tiles(self, selected: torch.Tensor) -> torch.Tensor:
        tiles, count, channels = selected.shape
        side = math.isqrt(count)
        # As InternVLModel.get_image_features: (tiles, side, side, C) -> pixel shuffle -> flatten -> projector.
        grid = selected.reshape(tiles, side, side, channels)
        shuffled = self._parts.pixel_shuffle(grid, scale_factor=self._ratio)
        return self._project(shuffled.reshape(tiles, -1, shuffled.shape[-1]))

    def image_runs(self, features: VisionFeatures, image_embeds: Sequence[torch.Tensor]) -> list[list[int]]:
        """``<img>``, one ``<IMG_CONTEXT>`` per embedding, ``</img>``."""
        start, end = self._read_ids()
        return [[start, *[self.image_token_id] * len(embeds), end] for embeds in image_embeds]


@register_backbone
class EncoderOnlyInternVLBackbone(EncoderOnlyBackbone, InternVLBackbone):
    """Classifier-only: the tower and token embeddings alone; fingerprints as ``'internvl'``, like the full model."""
