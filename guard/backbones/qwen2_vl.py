"""Qwen2-VL family: ``Qwen2VLForConditionalGeneration`` (native-resolution ViT, 2 x 2 patch merger, M-RoPE LLM).

The generic adapter reads it whole: the tower's pre-merger states (merge-block order undone into each image's
patch grid, pooled onto a 24 x 24 square), the merger's embeddings from ``get_image_features``, and
``mm_token_type_ids`` with the guard's safety tokens typed as text, so M-RoPE gives them 1-D positions right
before the image's (t, h, w) grid. This adapter keeps the family's name in fingerprints and overrides only:

* :attr:`Qwen2VLBackbone.resolution_unit`: the processor keeps images near their own size, so the guard
  bounds their patch count (the generic adapter cannot tell a native-resolution processor from its config);
* :attr:`Qwen2VLBackbone.required_image_inputs`: pixel values without ``image_grid_thw`` are refused up front;
* :attr:`Qwen2VLBackbone.num_patches`: 24 x 24 whatever ``vision_config.image_size`` says (GLM-4V's is its
  pretraining size, no bound on a native-resolution grid).
"""

from __future__ import annotations

from psaguard.backbones.generic import GenericBackbone
from psaguard.backbones.generic_processor import RUNS
from psaguard.backbones.registry import register_backbone

__all__ = ["Qwen2VLBackbone"]


@register_backbone
class Qwen2VLBackbone(GenericBackbone):
    """Hugging Face Qwen2-VL: native-resolution patches, 2 x 2 merger, M-RoPE positions for image tokens."""

    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    fallback = False
    image_input_names = ("image_grid_thw", RUNS)
    required_image_inputs = ("image_grid_thw",)
    unquantized_modules = ("model.visual", "lm_head")  # the tower holds the merger

    @property
    def num_patches(self) -> int:
        return 24 * 24

    @property
    def resolution_unit(self) -> tuple[int, int]:
        """The tower's patch and the processor's grid (``patch_size * merge_size``): images keep their size."""
        vision = self.config.vision_config
        return int(vision.patch_size), int(vision.patch_size) * int(vision.spatial_merge_size)
