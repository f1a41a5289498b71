"""Qwen2.5-VL family: ``Qwen2_5_VLForConditionalGeneration``: Qwen2-VL's layout with window attention in the tower.

The tower regroups the patches window by window (in units of one merge block) before its blocks and
restores the order only after its merger, so its last hidden state is in window order. The one override:
:meth:`Qwen2_5_VLBackbone.tower_pass` undoes that order (the tower's own window index) before the generic
adapter lays the states out as Qwen2-VL's (merge blocks -> patch grid -> pooled square safety grid).
"""

from __future__ import annotations

from typing import Any

import torch

from psaguard.backbones.qwen2_vl import Qwen2VLBackbone
from psaguard.backbones.registry import register_backbone

__all__ = ["Qwen2_5_VLBackbone"]


@register_backbone
class Qwen2_5_VLBackbone(Qwen2VLBackbone):
    """Hugging Face Qwen2.5-VL: Qwen2-VL's inputs and M-RoPE, a windowed tower."""

    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)

    def tower_pass(self, pixel_values: torch.Tensor, image_inputs: dict[str, torch.Tensor]) -> tuple[Any, Any]:
        """The last hidden state in the processor's patch order: the tower's window order undone."""
        # Imported here: importing transformers' vision utilities installs warning filters (psaguard's
        # import has no global side effects).
        from transformers.vision_utils import get_vision_window_index

        out, hidden = super().tower_pass(pixel_values, image_inputs)
        tower = self.vision_tower
        window_index, _ = get_vision_window_index(
            image_inputs["image_grid_thw"].to(hidden.device),
            spatial_merge_size=tower.spatial_merge_size,
            window_size=tower.window_size,
            patch_size=tower.patch_size,
        )
        units = hidden.reshape(-1, tower.spatial_merge_unit, hidden.shape[-1])
        return out, units[torch.argsort(window_index.to(hidden.device))].reshape(hidden.shape)
