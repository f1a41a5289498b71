"""GLM-4V family: ``Glm4vForConditionalGeneration`` (GLM-4.1V: Qwen2-VL-style patches, conv downsample + merger).

Inputs and M-RoPE are Qwen2-VL's (``image_grid_thw``, ``mm_token_type_ids``; the safety tokens form a
text-like run before each image's grid). The tower ends in a 2 x 2 convolution over each merge block and a
merger, and returns only their output, so the adapter reads the per-patch features where the tower's last
norm leaves them (a forward hook on ``post_layernorm``), in the processor's merge-block order, and runs the
tower's tail (downsample, merger) itself for the model's embeddings.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from psaguard.backbones.base import VisionFeatures
from psaguard.backbones.encoder_only import EncoderOnlyBackbone
from psaguard.backbones.qwen2_vl import Qwen2VLBackbone
from psaguard.backbones.registry import register_backbone
from psaguard.errors import InvalidInputError

__all__ = ["EncoderOnlyGlm4vBackbone", "Glm4vBackbone"]


@register_backbone
class Glm4vBackbone(Qwen2VLBackbone):
    """Hugging Face GLM-4V (GLM-4.1V): Qwen2-VL's inputs, a downsampling tower tail."""

    family = "glm4v"
    model_types = ("glm4v",)

    @property
    def vision_hidden_size(self) -> int:
        return self.config.vision_config.hidden_size

    def _unmerged(self, tower: nn.Module, pixel_values: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        """The tower's per-patch features after its last norm (before the downsample and merger)."""
        seen: list[torch.Tensor] = []
        handle = tower.post_layernorm.register_forward_hook(lambda module, args, out: seen.append(out))
        try:
            tower(pixel_values, grid_thw=grids, return_dict=True)
        finally:
            handle.remove()
        return seen[-1]

    def project(self, features: VisionFeatures) -> list[torch.Tensor]:
        """The tower's tail on the per-patch features: 2 x 2 downsample per merge block, then the merger."""
        if features.tiles is None:
            raise InvalidInputError(f"{self.family} features must carry the patch count per image")
        tower = self.vision_tower
        weight = tower.downsample.weight  # a convolution: never 4-bit, so its dtype is the tower's compute dtype
        m = self._merge
        hidden = features.selected.to(weight.device, weight.dtype)
        blocks = hidden.view(-1, m, m, hidden.shape[-1]).permute(0, 3, 1, 2)
        merged = tower.merger(tower.downsample(blocks).view(-1, self.config.vision_config.out_hidden_size))
        return list(torch.split(merged, [n // m**2 for n in features.tiles]))


@register_backbone
class EncoderOnlyGlm4vBackbone(EncoderOnlyBackbone, Glm4vBackbone):
    """Classifier-only: the tower and token embeddings alone; fingerprints as ``'glm4v'``, like the full model."""

    tower_checkpoint_prefixes = ("model.visual.", "visual.")
    embedding_checkpoint_keys = ("model.language_model.embed_tokens.weight", "model.embed_tokens.weight")

    @classmethod
    def tower_from_config(cls, vision_config: Any) -> nn.Module:
        """GLM-4V's vision model, as ``Glm4vModel`` builds it."""
        from transformers.models.glm4v.modeling_glm4v import Glm4vVisionModel

        return Glm4vVisionModel._from_config(vision_config)
