"""Mistral3 family: ``Mistral3ForConditionalGeneration`` (Pixtral tower at native aspect ratio, patch merger, Mistral).

The generic adapter reads it: each image's (height / patch, width / patch) grid of tower states pooled onto
the safety projector's square (24 x 24 at most), the merged embeddings of ``get_image_features``, and the
processor's runs (rows of ``[IMG]`` each ended by ``[IMG_BREAK]``, the last by ``[IMG_END]``). The overrides:

* :attr:`Mistral3Backbone.resolution_unit`: the processor keeps images near their own size, so the guard
  bounds their patch count;
* :meth:`Mistral3Backbone.image_inputs_from_ids`: ``wrap()`` gets the processor's ids, whose row breaks split
  one image's tokens, so each image's run is read back up to its ``[IMG_END]``;
* the states of ``vision_feature_layer`` (:attr:`feature_layers`, CLS-free: the ``'full'`` strategy).
"""

from __future__ import annotations

from typing import Any

import torch

from psaguard.backbones.generic import GenericBackbone
from psaguard.backbones.generic_processor import RUNS, padded_runs, special_token_id
from psaguard.backbones.registry import register_backbone

__all__ = ["Mistral3Backbone"]


@register_backbone
class Mistral3Backbone(GenericBackbone):
    """Hugging Face Mistral3 (Mistral Small 3.x vision): Pixtral tower, patch-merging projector, Mistral LLM."""

    family = "mistral3"
    model_types = ("mistral3",)
    fallback = False
    image_input_names = ("image_sizes", RUNS)
    feature_layers = True
    feature_strategy = "full"  # Pixtral has no CLS token to drop, and Mistral3 configs name no strategy
    required_image_inputs = ("image_sizes",)
    _image_end: int | None = None

    @property
    def resolution_unit(self) -> tuple[int, int]:
        """The tower's patch and the merged patch the processor rounds image sides to: images keep their size."""
        patch = int(self.config.vision_config.patch_size)
        return patch, patch * int(getattr(self.config, "spatial_merge_size", 1))

    def read_processor(self, processor: Any) -> None:
        super().read_processor(processor)
        end = getattr(processor, "image_end_token", "[IMG_END]")
        self._image_end = special_token_id(processor.tokenizer, end, self.family)

    def image_inputs_from_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each image's run: from its first ``[IMG]`` through its ``[IMG_END]``."""
        runs: list[list[int]] = []
        inside = False
        for token in input_ids[attention_mask.bool()].tolist():
            if token == self.image_token_id and not inside:
                runs.append([])
                inside = True
            if inside:
                runs[-1].append(token)
            inside = inside and token != self._image_end
        return {RUNS: padded_runs(runs)} if runs and self._image_end is not None else {}
