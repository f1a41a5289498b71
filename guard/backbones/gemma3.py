"""Gemma 3 family: ``Gemma3ForConditionalGeneration`` (SigLIP tower, pooled soft tokens, Gemma 3 LLM).

The projector average-pools the tower's square patch grid to ``mm_tokens_per_image`` soft tokens; the safety
projector sees the tower's full grid (at 896 px, 64 x 64 patches). The chat template writes
``<start_of_image>`` per image, which the processor replaces by its ``full_image_sequence``
(``\\n\\n<start_of_image>``, one ``<image_soft_token>`` per embedding, ``<end_of_image>\\n\\n``): the
template's placeholder is not the model's image token. Image tokens attend to each other bidirectionally,
which the model reads from ``token_type_ids`` (1 at image tokens); the guard's safety tokens are image
tokens of the run, so they join the image's bidirectional block. Pan-and-scan crops are not supported yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn

from psaguard.backbones.base import Backbone, VisionFeatures
from psaguard.backbones.encoder_only import EncoderOnlyBackbone
from psaguard.backbones.llava import image_processor_outputs, special_token_id
from psaguard.backbones.registry import register_backbone
from psaguard.errors import ProcessorError
from psaguard.injection import features_as_tensor
from psaguard.tokenization import tokenizer_of

__all__ = ["EncoderOnlyGemma3Backbone", "Gemma3Backbone"]


@dataclass(frozen=True)
class _Gemma3Ids:
    """What the processor writes for an image, read from it: the placeholder and the run around the soft tokens."""

    placeholder: int
    before: tuple[int, ...]
    after: tuple[int, ...]


@register_backbone
class Gemma3Backbone(Backbone):
    """Hugging Face Gemma 3: one square view per image, pooled soft tokens, bidirectional image attention."""

    family = "gemma3"
    model_types = ("gemma3",)
    derived_input_names = ("token_type_ids",)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._parts = getattr(self.base_model, "model", self.base_model)
        vision = self.config.vision_config
        self._image_side = int(vision.image_size)
        grid = self._image_side // int(vision.patch_size)
        self._num_patches = grid * grid
        self._ids: _Gemma3Ids | None = None

    @property
    def vision_tower(self) -> nn.Module:
        return self._parts.vision_tower

    @property
    def vision_hidden_size(self) -> int:
        return self.config.vision_config.hidden_size

    @property
    def num_patches(self) -> int:
        return self._num_patches

    @property
    def placeholder_token_id(self) -> int:
        """The chat template's ``<start_of_image>`` (the config's ``boi_token_id``), not the soft token."""
        return self.config.boi_token_id

    def read_processor(self, processor: Any) -> None:
        """The token ids of the processor's ``full_image_sequence`` around its soft tokens."""
        tokenizer = tokenizer_of(processor)
        sequence = getattr(processor, "full_image_sequence", None)
        if not isinstance(sequence, str):
            raise ProcessorError(f"{type(processor).__name__} is not a Gemma 3 processor (no full_image_sequence)")
        if getattr(getattr(processor, "image_processor", None), "do_pan_and_scan", False):
            raise ProcessorError("Gemma 3 pan-and-scan crops are not supported yet; use do_pan_and_scan=False")
        soft = special_token_id(tokenizer, getattr(tokenizer, "image_token", "<image_soft_token>"), self.family)
        boi = special_token_id(tokenizer, getattr(tokenizer, "boi_token", "<start_of_image>"), self.family)
        if (soft, boi) != (self.image_token_id, self.placeholder_token_id):
            raise ProcessorError("the processor's image tokens are not the model's: it belongs to another model")
        run = list(tokenizer(sequence, add_special_tokens=False)["input_ids"])
        tokens = self.config.mm_tokens_per_image
        if run.count(soft) != tokens or soft not in run:
            raise ProcessorError(
                f"the processor writes {run.count(soft)} soft tokens per image, the model takes {tokens}"
            )
        first, last = run.index(soft), len(run) - run[::-1].index(soft)
        if run[first:last] != [soft] * tokens:
            raise ProcessorError("the processor's image sequence interleaves other tokens with its soft tokens")
        self._ids = _Gemma3Ids(placeholder=boi, before=tuple(run[:first]), after=tuple(run[last:]))

    # ------------------------------------------------------------------ vision
    def preprocess(self, processor: Any, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        pixel_values = torch.as_tensor(image_processor_outputs(processor, images, self.family)["pixel_values"])
        side = self._image_side
        if (
            pixel_values.dim() != 4
            or tuple(pixel_values.shape[-2:]) != (side, side)
            or len(pixel_values) != len(images)
        ):
            raise ProcessorError(
                f"the processor gives pixel_values {tuple(pixel_values.shape)}, but a {self.family!r} model takes "
                f"one (3, {side}, {side}) view per image: the processor belongs to another model or crops"
            )
        return {"pixel_values": pixel_values}

    def encode_images(self, pixel_values: torch.Tensor, **image_kwargs: torch.Tensor) -> VisionFeatures:
        tower = self.vision_tower
        param = next(tower.parameters())
        hidden = tower(pixel_values=pixel_values.to(param.device, param.dtype), return_dict=True).last_hidden_state
        # The projector reads the last hidden state, a square grid: the safety projector's grid too.
        return VisionFeatures(patches=hidden, selected=hidden)

    def project(self, features: VisionFeatures) -> list[torch.Tensor]:
        projector = self._parts.multi_modal_projector
        param = next(projector.parameters())
        return list(projector(features.selected.to(param.device, param.dtype)))

    # ------------------------------------------------------------------ the language model's input
    def image_runs(self, features: VisionFeatures, image_embeds: Sequence[torch.Tensor]) -> list[list[int]]:
        ids = self._read_ids()
        return [[*ids.before, *[self.image_token_id] * len(embeds), *ids.after] for embeds in image_embeds]

    def model_image_inputs(self, image_features: Sequence[torch.Tensor], input_ids: torch.Tensor) -> dict[str, Any]:
        """The features as one tensor, and ``token_type_ids`` marking the image tokens (bidirectional blocks)."""
        token_type_ids = (input_ids == self.image_token_id).long()
        return {**features_as_tensor(image_features, input_ids), "token_type_ids": token_type_ids}

    def _read_ids(self) -> _Gemma3Ids:
        if self._ids is None:
            raise ProcessorError("the gemma3 adapter has not read its processor (check_processor)")
        return self._ids


@register_backbone
class EncoderOnlyGemma3Backbone(EncoderOnlyBackbone, Gemma3Backbone):
    """Classifier-only (its own scaled embedding module kept); fingerprints as ``'gemma3'``, like the full model."""
