"""Aya Vision family: ``AyaVisionForConditionalGeneration`` (SigLIP tower over tiles, pixel shuffle, SwiGLU, Cohere2).

The generic adapter reads it whole: the chat template's ``<image>`` placeholder, which the processor expands
into ``<|START_OF_IMG|>``, per tile a ``TILE_i`` marker (``TILE_GLOBAL`` for the global view) and one
``<|IMG_PATCH|>`` per embedding, then ``<|END_OF_IMG|>``; the embeddings of all tiles from
``get_image_features``. Overrides, as InternVL's: the projector's own feature layer, the global view (last
tile), the tower's own grid.
"""

from __future__ import annotations

from psaguard.backbones.internvl import InternVLBackbone
from psaguard.backbones.registry import register_backbone

__all__ = ["AyaVisionBackbone"]


@register_backbone
class AyaVisionBackbone(InternVLBackbone):
    """Hugging Face Aya Vision: tiles plus a global view, pixel shuffle, marked tiles in the image run."""

    family = "aya_vision"
    model_types = ("aya_vision",)
