"""Model-family adapters: one small :class:`Backbone` subclass per family of vision-language models.

Each adapter registers itself with :func:`register_backbone` when its module is imported; importing this
package imports the built-in ones. :func:`resolve_backbone` picks the adapter for a model (newest
registration first). docs/adapters.md describes how to write and register one.
"""

from __future__ import annotations

from psaguard.backbones.aya_vision import AyaVisionBackbone, EncoderOnlyAyaVisionBackbone
from psaguard.backbones.base import Backbone, VisionFeatures, pool_to_square_grid, unwrap_model
from psaguard.backbones.encoder_only import (
    ENCODER_ONLY_BACKBONES,
    EncoderOnlyBackbone,
    EncoderOnlyLlavaBackbone,
    EncoderOnlyLlavaNextBackbone,
    EncoderOnlyModel,
    encoder_only_backbones,
)
from psaguard.backbones.internvl import EncoderOnlyInternVLBackbone, InternVLBackbone
from psaguard.backbones.llava import LlavaBackbone
from psaguard.backbones.llava_next import LlavaNextBackbone
from psaguard.backbones.llava_onevision import EncoderOnlyLlavaOnevisionBackbone, LlavaOnevisionBackbone
from psaguard.backbones.llava_pixtral import EncoderOnlyLlavaPixtralBackbone, LlavaPixtralBackbone
from psaguard.backbones.mistral3 import EncoderOnlyMistral3Backbone, Mistral3Backbone
from psaguard.backbones.registry import (
    ADAPTERS_DOC,
    BackboneRegistry,
    register_backbone,
    registered_backbones,
    resolve_backbone,
)
from psaguard.backbones.vipllava import EncoderOnlyVipLlavaBackbone, VipLlavaBackbone

__all__ = [
    "ADAPTERS_DOC",
    "ENCODER_ONLY_BACKBONES",
    "AyaVisionBackbone",
    "Backbone",
    "BackboneRegistry",
    "EncoderOnlyAyaVisionBackbone",
    "EncoderOnlyBackbone",
    "EncoderOnlyInternVLBackbone",
    "EncoderOnlyLlavaBackbone",
    "EncoderOnlyLlavaNextBackbone",
    "EncoderOnlyLlavaOnevisionBackbone",
    "EncoderOnlyLlavaPixtralBackbone",
    "EncoderOnlyMistral3Backbone",
    "EncoderOnlyModel",
    "EncoderOnlyVipLlavaBackbone",
    "InternVLBackbone",
    "LlavaBackbone",
    "LlavaNextBackbone",
    "LlavaOnevisionBackbone",
    "LlavaPixtralBackbone",
    "Mistral3Backbone",
    "VipLlavaBackbone",
    "VisionFeatures",
    "encoder_only_backbones",
    "pool_to_square_grid",
    "register_backbone",
    "registered_backbones",
    "resolve_backbone",
    "unwrap_model",
]
