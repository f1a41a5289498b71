"""Qwen3-VL family: ``Qwen3VLForConditionalGeneration``: Qwen2-VL's inputs plus DeepStack visual features.

Besides the merger's embeddings, the model adds "deepstack" features to the hidden states of the image
positions in its first language-model layers: merged features of the tower's intermediate blocks
(``deepstack_visual_indexes``), one per layer, which travel with the image embeddings in
``mm_encoder_outputs``. The adapter keeps those blocks' outputs from its one vision pass (in
``VisionFeatures.selected``, beside the last hidden state) and merges them when building the model input.
The safety tokens sit at image-token positions too (before each image's grid, typed as text for M-RoPE, as
for Qwen2-VL); their deepstack rows are zero, so the deepstack layers add nothing to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from psaguard.backbones.base import VisionFeatures
from psaguard.backbones.encoder_only import EncoderOnlyBackbone
from psaguard.backbones.qwen2_vl import Qwen2VLBackbone
from psaguard.backbones.registry import register_backbone

__all__ = ["EncoderOnlyQwen3VLBackbone", "Qwen3VLBackbone"]


@register_backbone
class Qwen3VLBackbone(Qwen2VLBackbone):
    """Hugging Face Qwen3-VL: Qwen2-VL's inputs and M-RoPE handling, DeepStack features with the embeddings."""

    family = "qwen3_vl"
    model_types = ("qwen3_vl",)

    @property
    def vision_hidden_size(self) -> int:
        return self.config.vision_config.hidden_size

    @property
    def _deepstack_layers(self) -> list[int]:
        return list(self.config.vision_config.deepstack_visual_indexes)

    def _tower_pass(
        self, tower: nn.Module, pixel_values: torch.Tensor, grids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The last hidden state, and the deepstack blocks' outputs + the last hidden state side by side."""
        out = tower(pixel_values, grid_thw=grids, output_hidden_states=True, return_dict=True)
        blocks = [out.hidden_states[i + 1] for i in self._deepstack_layers]  # hidden_states[0]: the embeddings
        return out.last_hidden_state, torch.cat([*blocks, out.last_hidden_state], dim=-1)

    def _last_hidden(self, selected: torch.Tensor) -> torch.Tensor:
        return selected[..., -self.vision_hidden_size :].contiguous()

    def _model_inputs(
        self, features: VisionFeatures, image_features: Sequence[torch.Tensor], input_ids: torch.Tensor
    ) -> dict[str, Any]:
        """Qwen2-VL's inputs, with each deepstack layer's features per image (zero rows for the safety tokens)."""
        # Imported here: importing the model module installs warning filters (psaguard's import has none).
        from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

        inputs = super()._model_inputs(features, image_features, input_ids)
        width = self.vision_hidden_size
        tower = self.vision_tower
        param = next(tower.parameters())
        merged_counts = [n // self._merge**2 for n in features.tiles or ()]
        deepstack = []
        for layer, merger in enumerate(tower.deepstack_merger_list):
            block = features.selected[..., layer * width : (layer + 1) * width].contiguous()
            block = block.to(param.device, param.dtype)
            per_image = torch.split(merger(block), merged_counts)
            deepstack.append(
                [
                    torch.cat([ours.new_zeros(len(theirs) - len(ours), ours.shape[-1]), ours])
                    for ours, theirs in zip(per_image, image_features)
                ]
            )
        image = BaseModelOutputWithDeepstackFeatures(pooler_output=list(image_features), deepstack_features=deepstack)
        return {**inputs, "mm_encoder_outputs": {"image": image}}


@register_backbone
class EncoderOnlyQwen3VLBackbone(EncoderOnlyBackbone, Qwen3VLBackbone):
    """Classifier-only: the tower and token embeddings alone; fingerprints as ``'qwen3_vl'``, like the full model."""

    tower_checkpoint_prefixes = ("model.visual.", "visual.")
    embedding_checkpoint_keys = ("model.language_model.embed_tokens.weight", "model.embed_tokens.weight")
