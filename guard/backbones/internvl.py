"""InternVL family: ``InternVLForConditionalGeneration`` (InternViT tower over tiles, pixel shuffle, MLP, Qwen2 LLM).

The generic adapter reads it whole (the processor's ``<img>``, ``<IMG_CONTEXT>`` per embedding, ``</img>``
runs, ``get_image_features``' embeddings of all tiles stacked). Overrides, as for every LLaVA-style tiling
family: the safety projector reads the tower states the model's projector reads (:attr:`feature_layers`),
of each image's global view (its last tile, :attr:`view_tile`), on the tower's own grid (``max_grid_side``
None: the guard's grid is the tile's, as guards trained before the generic adapter were).
"""

from __future__ import annotations

from psaguard.backbones.generic import GenericBackbone
from psaguard.backbones.generic_processor import RUNS
from psaguard.backbones.registry import register_backbone

__all__ = ["InternVLBackbone"]


@register_backbone
class InternVLBackbone(GenericBackbone):
    """Hugging Face InternVL (2.5 / 3 in the ``-hf`` layout): tiles, pixel shuffle, ``<img>...</img>`` runs."""

    family = "internvl"
    model_types = ("internvl",)
    fallback = False
    image_input_names = (RUNS,)
    feature_layers = True
    view_tile = -1
    max_grid_side = None
