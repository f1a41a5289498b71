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
    ClassifierOnlyGenericBackbone,
    EncoderOnlyBackbone,
    EncoderOnlyLlavaBackbone,
    EncoderOnlyLlavaNextBackbone,
    encoder_only_backbones,
    is_classifier_only,
)
from psaguard.backbones.gemma3 import EncoderOnlyGemma3Backbone, Gemma3Backbone
from psaguard.backbones.generic import GenericBackbone, GenericFeatures
from psaguard.backbones.glm4v import EncoderOnlyGlm4vBackbone, Glm4vBackbone
from psaguard.backbones.idefics3 import (
    EncoderOnlyIdefics3Backbone,
    EncoderOnlySmolVLMBackbone,
    Idefics3Backbone,
    SmolVLMBackbone,
)
from psaguard.backbones.internvl import EncoderOnlyInternVLBackbone, InternVLBackbone
from psaguard.backbones.llava import LlavaBackbone
from psaguard.backbones.llava_next import LlavaNextBackbone
from psaguard.backbones.llava_onevision import EncoderOnlyLlavaOnevisionBackbone, LlavaOnevisionBackbone
from psaguard.backbones.llava_pixtral import EncoderOnlyLlavaPixtralBackbone, LlavaPixtralBackbone
from psaguard.backbones.mistral3 import EncoderOnlyMistral3Backbone, Mistral3Backbone
from psaguard.backbones.qwen2_5_vl import EncoderOnlyQwen2_5_VLBackbone, Qwen2_5_VLBackbone
from psaguard.backbones.qwen2_vl import EncoderOnlyQwen2VLBackbone, Qwen2VLBackbone
from psaguard.backbones.qwen3_vl import EncoderOnlyQwen3VLBackbone, Qwen3VLBackbone
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
    "ClassifierOnlyGenericBackbone",
    "EncoderOnlyAyaVisionBackbone",
    "EncoderOnlyBackbone",
    "EncoderOnlyGemma3Backbone",
    "EncoderOnlyGlm4vBackbone",
    "EncoderOnlyIdefics3Backbone",
    "EncoderOnlyInternVLBackbone",
    "EncoderOnlyLlavaBackbone",
    "EncoderOnlyLlavaNextBackbone",
    "EncoderOnlyLlavaOnevisionBackbone",
    "EncoderOnlyLlavaPixtralBackbone",
    "EncoderOnlyMistral3Backbone",
    "EncoderOnlyQwen2VLBackbone",
    "EncoderOnlyQwen2_5_VLBackbone",
    "EncoderOnlyQwen3VLBackbone",
    "EncoderOnlySmolVLMBackbone",
    "EncoderOnlyVipLlavaBackbone",
    "Gemma3Backbone",
    "GenericBackbone",
    "GenericFeatures",
    "Glm4vBackbone",
    "Idefics3Backbone",
    "InternVLBackbone",
    "LlavaBackbone",
    "LlavaNextBackbone",
    "LlavaOnevisionBackbone",
    "LlavaPixtralBackbone",
    "Mistral3Backbone",
    "Qwen2VLBackbone",
    "Qwen2_5_VLBackbone",
    "Qwen3VLBackbone",
    "SmolVLMBackbone",
    "VipLlavaBackbone",
    "VisionFeatures",
    "encoder_only_backbones",
    "is_classifier_only",
    "pool_to_square_grid",
    "register_backbone",
    "registered_backbones",
    "resolve_backbone",
    "unwrap_model",
]
