"""LLaVA with a Pixtral vision tower (the pixtral-12b hub layout): native aspect ratios, row-break image runs.

``LlavaForConditionalGeneration`` with ``vision_config.model_type == "pixtral"``. The tower, the grids and
the image runs (``[IMG] * columns + [IMG_BREAK]`` per patch row, ``[IMG_END]`` last) are a Mistral3's
without the patch merger, so this adapter is Mistral3's (:mod:`psaguard.backbones.mistral3`) with merge size
1 and LLaVA's MLP projector. Each image's H x W grid is pooled onto the safety projector's square grid.
"""

from __future__ import annotations

import torch
from torch import nn

from psaguard.backbones.base import VisionFeatures, unwrap_model
from psaguard.backbones.encoder_only import EncoderOnlyBackbone
from psaguard.backbones.mistral3 import Mistral3Backbone
from psaguard.backbones.registry import register_backbone
from psaguard.errors import InvalidInputError

__all__ = ["EncoderOnlyLlavaPixtralBackbone", "LlavaPixtralBackbone"]

_TOWER_TYPE = "pixtral"


@register_backbone
class LlavaPixtralBackbone(Mistral3Backbone):
    """A LLaVA whose vision tower is Pixtral: Mistral3's grids and runs, one ``[IMG]`` per patch, LLaVA's projector."""

    family = "llava_pixtral"
    model_types = ("llava",)

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        vision = getattr(getattr(unwrap_model(model), "config", None), "vision_config", None)
        return super().supports(model) and getattr(vision, "model_type", None) == _TOWER_TYPE

    def _merge_size(self) -> int:
        return 1  # no patch merger: one embedding per patch

    def project(self, features: VisionFeatures) -> list[torch.Tensor]:
        """One ``(rows * columns, D)`` tensor per image: LLaVA's projector over its patches, row by row."""
        if features.tiles is None:
            raise InvalidInputError("Pixtral-tower features must carry each image's patch count")
        return list(torch.split(self._project(features.selected), list(features.tiles)))


@register_backbone
class EncoderOnlyLlavaPixtralBackbone(EncoderOnlyBackbone, LlavaPixtralBackbone):
    """Classifier-only: the Pixtral tower and token embeddings; fingerprints as ``'llava_pixtral'``."""
