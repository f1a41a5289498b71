"""LLaVA-1.5 family: ``LlavaForConditionalGeneration`` (CLIP-style tower, MLP projector, any text model)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import nn

from psaguard.backbones.base import Backbone, VisionFeatures
from psaguard.backbones.registry import register_backbone
from psaguard.errors import ProcessorError

__all__ = ["LlavaBackbone", "image_processor_outputs", "special_token_id"]


def image_processor_outputs(processor: Any, images: Sequence[Image.Image], family: str, **kwargs: Any) -> Any:
    """Run the processor's image processor on ``images``; :class:`ProcessorError` if it has none or fails.

    ``kwargs`` are the settings the family's processor passes its image processor on every call.
    """
    image_processor = getattr(processor, "image_processor", processor)
    if not callable(image_processor):
        raise ProcessorError(
            f"{type(processor).__name__} has no image processor; pass the {family!r} model's processor"
        )
    try:
        return image_processor(images=list(images), return_tensors="pt", **kwargs)
    except (TypeError, ValueError, KeyError) as err:
        raise ProcessorError(f"the processor cannot prepare images for a {family!r} model: {err}") from err


def special_token_id(tokenizer: Any, text: str, family: str) -> int:
    """The id of a special token a family's processor writes; :class:`ProcessorError` if the tokenizer lacks it."""
    token_id = tokenizer.convert_tokens_to_ids(text)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ProcessorError(f"the processor's tokenizer lacks {text!r}: it is not a {family!r} processor")
    return token_id


@register_backbone
class LlavaBackbone(Backbone):
    """Hugging Face LLaVA (1.5 style): vision tower, ``multi_modal_projector``, language model."""

    family = "llava"
    model_types = ("llava",)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        # LlavaForConditionalGeneration keeps its parts on `.model`; a bare LlavaModel holds them itself.
        self._parts = getattr(self.base_model, "model", self.base_model)
        config = self.config
        self._layer = config.vision_feature_layer
        self._strategy = getattr(config, "vision_feature_select_strategy", "default")
        vision = config.vision_config
        num_layers = 1 if isinstance(self._layer, int) else len(self._layer)
        self._vision_hidden = vision.hidden_size * num_layers
        # Some towers' configs give (height, width) pairs; these models' tiles are square.
        self._image_side = _side(vision.image_size)
        grid = self._image_side // _side(vision.patch_size)
        self._num_patches = grid * grid

    @property
    def vision_tower(self) -> nn.Module:
        return self._parts.vision_tower

    @property
    def vision_hidden_size(self) -> int:
        return self._vision_hidden

    @property
    def num_patches(self) -> int:
        return self._num_patches

    def preprocess(self, processor: Any, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        pixel_values = image_processor_outputs(processor, images, self.family)["pixel_values"]
        pixel_values = torch.as_tensor(pixel_values)
        side = self._image_side
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[-2:]) != (side, side):
            raise ProcessorError(
                f"the processor gives pixel_values {tuple(pixel_values.shape)}, but a {self.family!r} model takes "
                f"(B, 3, {side}, {side}): the processor belongs to another model"
            )
        return {"pixel_values": pixel_values}

    def encode_images(self, pixel_values: torch.Tensor, **image_kwargs: torch.Tensor) -> VisionFeatures:
        selected = self._select(self._tower_hidden_states(pixel_values, **image_kwargs))
        patches = selected
        if math.isqrt(selected.shape[1] - 1) ** 2 == selected.shape[1] - 1:  # 'full': CLS + square grid
            patches = selected[:, 1:]
        return VisionFeatures(patches=patches, selected=selected)

    def project(self, features: VisionFeatures) -> list[torch.Tensor]:
        return list(self._project(features.selected))

    # ------------------------------------------------------------------ shared with the LLaVA-style adapters
    def _tower_hidden_states(self, pixel_values: torch.Tensor, **tower_kwargs: Any) -> tuple[torch.Tensor, ...]:
        tower = self.vision_tower
        param = next(tower.parameters())
        out = tower(
            pixel_values.to(param.device, param.dtype), output_hidden_states=True, return_dict=True, **tower_kwargs
        )
        return out.hidden_states

    def _select(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        """The configured layer(s), CLS dropped for the 'default' strategy, concatenated on channels."""
        layers = [self._layer] if isinstance(self._layer, int) else list(self._layer)
        hidden = [hidden_states[i] for i in layers]
        if self._strategy == "default":  # drop CLS, as the model itself does
            hidden = [h[:, 1:] for h in hidden]
        return torch.cat(hidden, dim=-1)

    def _project(self, selected: torch.Tensor) -> torch.Tensor:
        projector = self._parts.multi_modal_projector
        param = next(projector.parameters())
        return projector(selected.to(param.device, param.dtype))


def _side(size: int | Sequence[int]) -> int:
    return size if isinstance(size, int) else int(size[0])
