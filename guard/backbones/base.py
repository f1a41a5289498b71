"""What the guard needs from a vision-language model, behind one small interface per model family."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from psaguard.config import ModelFingerprint

__all__ = ["Backbone", "VisionFeatures"]


@dataclass(frozen=True)
class VisionFeatures:
    """One vision pass over a batch of images.

    ``patches`` (B, N, C) lie on a square grid and feed the safety projector; ``selected`` are the features
    exactly as the model's own projector expects them (its layer and selection strategy). Families that
    split an image into tiles (LLaVA-NeXT) stack every image's tiles in ``selected`` (sum of ``tiles``, N, C)
    and say how in ``tiles`` and ``image_sizes``; single-view families leave both None.
    """

    patches: torch.Tensor
    selected: torch.Tensor
    tiles: tuple[int, ...] | None = None
    image_sizes: torch.Tensor | None = None

    def subset(self, rows: Sequence[int]) -> VisionFeatures:
        """The features of images ``rows`` only, in that order."""
        rows = list(rows)
        if self.tiles is None:
            return VisionFeatures(patches=self.patches[rows], selected=self.selected[rows])
        starts = [sum(self.tiles[:i]) for i in range(len(self.tiles))]
        pieces = [self.selected[starts[r] : starts[r] + self.tiles[r]] for r in rows]
        return VisionFeatures(
            patches=self.patches[rows],
            selected=torch.cat(pieces) if pieces else self.selected[:0],
            tiles=tuple(self.tiles[r] for r in rows),
            image_sizes=None if self.image_sizes is None else self.image_sizes[rows],
        )


class Backbone(ABC):
    """Adapter between psaguard and one family of vision-language models.

    A family adapter knows where the vision tower, projector and token embeddings of its models live, how
    to preprocess images, and how big everything is. Adding a family means subclassing this and listing
    the subclass in :data:`psaguard.backbones.BACKBONES`.
    """

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    image_input_names: ClassVar[tuple[str, ...]] = ()
    """Tensors besides ``pixel_values`` that :meth:`preprocess` returns and :meth:`encode_images` needs.

    They come out of the family's processor beside ``pixel_values`` (LLaVA-NeXT: ``image_sizes``), so code
    that receives processor outputs (the wrapped model, the trainer) knows what to route to the vision pass.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        """Whether this adapter handles ``model`` (dispatch on ``config.model_type``)."""
        return getattr(getattr(model, "config", None), "model_type", None) in cls.model_types

    @property
    @abstractmethod
    def vision_tower(self) -> nn.Module:
        """The vision encoder (run once per request)."""

    @property
    @abstractmethod
    def text_hidden_size(self) -> int:
        """Width of the language model's token embeddings."""

    @property
    @abstractmethod
    def vision_hidden_size(self) -> int:
        """Width of the selected vision features."""

    @property
    @abstractmethod
    def num_patches(self) -> int:
        """Patch tokens per image fed to the safety projector."""

    @property
    @abstractmethod
    def image_token_id(self) -> int:
        """Token id of the image placeholder in the language model's input."""

    @abstractmethod
    def preprocess(self, processor: Any, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """Turn RGB images into the tensors :meth:`encode_images` takes."""

    @abstractmethod
    def encode_images(self, pixel_values: torch.Tensor, **image_kwargs: torch.Tensor) -> VisionFeatures:
        """Run the vision tower once and select features."""

    def check_can_generate(self) -> None:
        """Raise :class:`~psaguard.errors.GenerationUnavailableError` if the model cannot generate.

        Full models can; classifier-only adapters (:mod:`psaguard.backbones.encoder_only`) hold no language
        model, and guarded generation checks this before judging anything.
        """
        return None  # a full model generates; classifier-only adapters override this to raise

    @abstractmethod
    def project(self, features: VisionFeatures) -> torch.Tensor | list[torch.Tensor]:
        """The model's own image embeddings for its language model: (B, N_llm, D), or one (L_i, D) per image."""

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Input token embeddings of the language model."""
        embeddings = self.model.get_input_embeddings()
        return embeddings(input_ids.to(embeddings.weight.device))

    @property
    def embedding_dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[0]

    def fingerprint(self) -> ModelFingerprint:
        """What the guard's weights depend on in this model."""
        config = self.model.config
        return ModelFingerprint(
            family=self.family,
            model_type=config.model_type,
            vision_hidden_size=self.vision_hidden_size,
            text_hidden_size=self.text_hidden_size,
            vision_feature_layer=_as_layer(getattr(config, "vision_feature_layer", -1)),
            num_image_tokens=self.num_patches,
            vocab_size=self.vocab_size,
        )


def _as_layer(layer: int | Sequence[int]) -> int | tuple[int, ...]:
    return layer if isinstance(layer, int) else tuple(layer)
