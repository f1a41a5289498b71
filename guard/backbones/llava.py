"""LLaVA-1.5 family: ``LlavaForConditionalGeneration`` (CLIP-style tower, MLP projector, any text model).

The generic adapter reads it. The overrides are those of every LLaVA-style adapter whose guards were trained
before the generic adapter existed (the shipped demo guard among them): the safety projector reads the states
the model's own projector reads (``vision_feature_layer``, CLS dropped per ``vision_feature_select_strategy``:
:attr:`~LlavaBackbone.feature_layers`) on the tower's own grid (``max_grid_side = None``), and their width is
known from the config alone (several layers side by side), without a probe pass. Like every family adapter,
it names the image inputs its processor writes (``image_input_names``), so ``wrap()`` refuses another
family's.
"""

from __future__ import annotations

from psaguard.backbones.generic import GenericBackbone
from psaguard.backbones.generic_processor import RUNS, image_processor_outputs, special_token_id
from psaguard.backbones.registry import register_backbone

__all__ = ["LlavaBackbone", "image_processor_outputs", "special_token_id"]


@register_backbone
class LlavaBackbone(GenericBackbone):
    """Hugging Face LLaVA (1.5 style): vision tower, ``multi_modal_projector``, language model."""

    family = "llava"
    model_types = ("llava",)
    fallback = False
    image_input_names = (RUNS,)  # the processor's inputs beside the pixels: another family's are refused
    feature_layers = True
    max_grid_side = None

    @property
    def vision_hidden_size(self) -> int:
        layers = self.config.vision_feature_layer
        return self.config.vision_config.hidden_size * (1 if isinstance(layers, int) else len(layers))
