"""GLM-4V family: ``Glm4vForConditionalGeneration`` (GLM-4.1V: Qwen2-VL-style patches, conv downsample + merger).

Inputs and M-RoPE are Qwen2-VL's (the parent adapter). The one override: the tower ends in a 2 x 2
convolution over each merge block and a merger and returns only their output, so
:meth:`Glm4vBackbone.tower_pass` reads the per-patch states where the tower's last norm leaves them (a forward
hook on ``post_layernorm``, in the processor's merge-block order); the embeddings are
``get_image_features``' own.
"""

from __future__ import annotations

from typing import Any

import torch

from psaguard.backbones.qwen2_vl import Qwen2VLBackbone
from psaguard.backbones.registry import register_backbone

__all__ = ["Glm4vBackbone"]


@register_backbone
class Glm4vBackbone(Qwen2VLBackbone):
    """Hugging Face GLM-4V (GLM-4.1V): Qwen2-VL's inputs, a downsampling tower tail."""

    family = "glm4v"
    model_types = ("glm4v",)

    def tower_pass(self, pixel_values: torch.Tensor, image_inputs: dict[str, torch.Tensor]) -> tuple[Any, Any]:
        """The tower's per-patch states after its last norm (before the downsample and merger)."""
        seen: list[torch.Tensor] = []
        handle = self.vision_tower.post_layernorm.register_forward_hook(lambda module, args, out: seen.append(out))
        try:
            out, _ = super().tower_pass(pixel_values, image_inputs)
        finally:
            handle.remove()
        return out, seen[-1]
