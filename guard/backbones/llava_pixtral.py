"""LLaVA with a Pixtral vision tower (the pixtral-12b hub layout): native aspect ratios, row-break image runs.

``LlavaForConditionalGeneration`` with ``vision_config.model_type == "pixtral"``: Mistral3's adapter (the
parent class: native-resolution budget, runs read back up to ``[IMG_END]``) without a patch merger, under
its own family name; it is tried before the LLaVA adapter (:meth:`LlavaPixtralBackbone.supports`).
"""

from __future__ import annotations

from torch import nn

from psaguard.backbones.base import unwrap_model
from psaguard.backbones.llava import LlavaBackbone
from psaguard.backbones.mistral3 import Mistral3Backbone
from psaguard.backbones.registry import register_backbone

__all__ = ["LlavaPixtralBackbone"]

_TOWER_TYPE = "pixtral"


@register_backbone
class LlavaPixtralBackbone(Mistral3Backbone):
    """A LLaVA whose vision tower is Pixtral: Mistral3's grids and runs, one ``[IMG]`` per patch, LLaVA's projector."""

    family = "llava_pixtral"
    model_types = LlavaBackbone.model_types  # registered after LLaVA's adapter (imported first), so tried before it

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        vision = getattr(getattr(unwrap_model(model), "config", None), "vision_config", None)
        return super().supports(model) and getattr(vision, "model_type", None) == _TOWER_TYPE
