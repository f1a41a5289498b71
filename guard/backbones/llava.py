"""LLaVA-1.5 family: ``LlavaForConditionalGeneration`` (CLIP-style tower, MLP projector, any text model)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import nn

from psaguard.backbones.base import Backbone, VisionFeatures

__all__ = ["LlavaBackbone"]


class LlavaBackbone(Backbone):
    """Hugging Face LLaVA (1.5 style): vision tower, ``multi_modal_projector``, language model."""

    family = "llava"
    model_types = ("llava",)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        # LlavaForConditionalGeneration keeps its parts on `.model`; a bare LlavaModel holds them itself.
        self._parts = getattr(model, "model", model)
        config = model.config
        self._layer = config.vision_feature_layer
        self._strategy = config.vision_feature_select_strategy
        vision = config.vision_config
        num_layers = 1 if isinstance(self._layer, int) else len(self._layer)
        self._vision_hidden = vision.hidden_size * num_layers
        grid = vision.image_size // vision.patch_size
        self._num_patches = grid * grid

    @property
    def vision_tower(self) -> nn.Module:
        return self._parts.vision_tower

    @property
    def text_hidden_size(self) -> int:
        return self.model.config.text_config.hidden_size

    @property
    def vision_hidden_size(self) -> int:
        return self._vision_hidden

    @property
    def num_patches(self) -> int:
        return self._num_patches

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    def preprocess(self, processor: Any, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        image_processor = getattr(processor, "image_processor", processor)
        out = image_processor(images=list(images), return_tensors="pt")
        return {"pixel_values": out["pixel_values"]}

    def encode_images(self, pixel_values: torch.Tensor, **image_kwargs: torch.Tensor) -> VisionFeatures:
        tower = self.vision_tower
        param = next(tower.parameters())
        out = tower(pixel_values.to(param.device, param.dtype), output_hidden_states=True, return_dict=True)
        layers = [self._layer] if isinstance(self._layer, int) else list(self._layer)
        hidden = [out.hidden_states[i] for i in layers]
        if self._strategy == "default":  # drop CLS, as the model itself does
            hidden = [h[:, 1:] for h in hidden]
        selected = torch.cat(hidden, dim=-1)
        patches = selected
        if math.isqrt(selected.shape[1] - 1) ** 2 == selected.shape[1] - 1:  # 'full': CLS + square grid
            patches = selected[:, 1:]
        return VisionFeatures(patches=patches, selected=selected)

    def project(self, features: VisionFeatures) -> torch.Tensor:
        projector = self._parts.multi_modal_projector
        param = next(projector.parameters())
        return projector(features.selected.to(param.device, param.dtype))
