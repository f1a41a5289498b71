"""Model-family adapters: one small :class:`Backbone` subclass per family of vision-language models.

Each adapter registers itself with :func:`register_backbone` when its module is imported; importing this
package imports the built-in ones. :func:`resolve_backbone` picks the adapter for a model (newest
registration first). docs/adapters.md describes how to write and register one.
"""

from __future__ import annotations

from psaguard.backbones.aya_vision import AyaVisionBackbone
from psaguard.backbones.base import Backbone, VisionFeatures, pool_to_square_grid, unwrap_model
from psaguard.backbones.encoder_only import (
    ClassifierOnlyGenericBackbone,
    EncoderOnlyBackbone,
    encoder_only_backbones,
    is_classifier_only,
)
from psaguard.backbones.gemma3 import Gemma3Backbone
from psaguard.backbones.generic import GenericBackbone, GenericFeatures
from psaguard.backbones.glm4v import Glm4vBackbone
from psaguard.backbones.idefics3 import Idefics3Backbone, SmolVLMBackbone
from psaguard.backbones.internvl import InternVLBackbone
from psaguard.backbones.llava import LlavaBackbone
from psaguard.backbones.llava_next import LlavaNextBackbone
from psaguard.backbones.llava_onevision import LlavaOnevisionBackbone
from psaguard.backbones.llava_pixtral import LlavaPixtralBackbone
from psaguard.backbones.mistral3 import Mistral3Backbone
from psaguard.backbones.qwen2_5_vl import Qwen2_5_VLBackbone
from psaguard.backbones.qwen2_vl import Qwen2VLBackbone
from psaguard.backbones.qwen3_vl import Qwen3VLBackbone
from psaguard.backbones.registry import (
    ADAPTERS_DOC,
    BackboneRegistry,
    register_backbone,
    registered_backbones,
    resolve_backbone,
)
from psaguard.backbones.vipllava import VipLlavaBackbone


def _encoder_only(adapter: type[Backbone]) -> type[Backbone]:
    """Register ``EncoderOnly<adapter>``: the family adapter with :class:`EncoderOnlyBackbone` mixed in. Registered
    after every full-model adapter, it is tried before them on a classifier-only model (a more specific layout's,
    registered later here, before its family's)."""
    doc = f"{adapter.__name__} on a classifier-only model (its language model removed); fingerprints as its family."
    namespace = {"__doc__": doc, "__module__": __name__}
    return register_backbone(type(f"EncoderOnly{adapter.__name__}", (EncoderOnlyBackbone, adapter), namespace))


EncoderOnlyLlavaBackbone = _encoder_only(LlavaBackbone)
EncoderOnlyLlavaNextBackbone = _encoder_only(LlavaNextBackbone)
EncoderOnlyAyaVisionBackbone = _encoder_only(AyaVisionBackbone)
EncoderOnlyGemma3Backbone = _encoder_only(Gemma3Backbone)
EncoderOnlyGlm4vBackbone = _encoder_only(Glm4vBackbone)
EncoderOnlyIdefics3Backbone = _encoder_only(Idefics3Backbone)
EncoderOnlySmolVLMBackbone = _encoder_only(SmolVLMBackbone)
EncoderOnlyInternVLBackbone = _encoder_only(InternVLBackbone)
EncoderOnlyLlavaOnevisionBackbone = _encoder_only(LlavaOnevisionBackbone)
EncoderOnlyLlavaPixtralBackbone = _encoder_only(LlavaPixtralBackbone)
EncoderOnlyMistral3Backbone = _encoder_only(Mistral3Backbone)
EncoderOnlyQwen2_5_VLBackbone = _encoder_only(Qwen2_5_VLBackbone)
EncoderOnlyQwen2VLBackbone = _encoder_only(Qwen2VLBackbone)
EncoderOnlyQwen3VLBackbone = _encoder_only(Qwen3VLBackbone)
EncoderOnlyVipLlavaBackbone = _encoder_only(VipLlavaBackbone)

ENCODER_ONLY_BACKBONES: tuple[type[Backbone], ...] = (EncoderOnlyLlavaBackbone, EncoderOnlyLlavaNextBackbone)
"""The built-in LLaVA classifier-only adapters."""

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
