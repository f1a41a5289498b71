"""Qwen2-VL family: ``Qwen2VLForConditionalGeneration`` (native-resolution ViT, 2 x 2 patch merger, M-RoPE LLM).

The image processor resizes each image to multiples of ``patch_size * merge_size`` and flattens its patches
in merge blocks (each 2 x 2 block of patches consecutive), with ``image_grid_thw`` giving each image's
(temporal, height, width) patch grid; the merger turns every block into one embedding. The safety projector
sees the tower's features *before* the merger, with the block order undone into the image's (height, width)
patch grid and that grid pooled onto a fixed square (:attr:`Qwen2VLBackbone.safety_grid_side`).

**Safety tokens and M-RoPE.** The language model places image tokens on a (t, h, w) grid of rotary positions
computed from ``image_grid_thw`` and ``mm_token_type_ids`` (1 at image tokens), and text tokens on a line.
The guard's safety tokens cannot sit inside the image's grid, so they form a text-like run right before it:
they are image-token ids (so the model scatters the ``llm_tokens`` into them with the image embeddings),
typed 0 in ``mm_token_type_ids`` (so the model gives them consecutive 1-D positions, as to text, and starts
the image's grid after them). With ``inject_llm_tokens=False`` the input is exactly the processor's.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from psaguard.backbones.base import Backbone, VisionFeatures, pool_to_square_grid
from psaguard.backbones.encoder_only import EncoderOnlyBackbone
from psaguard.backbones.llava import image_processor_outputs
from psaguard.backbones.registry import register_backbone
from psaguard.errors import InvalidInputError, ProcessorError
from psaguard.injection import ImageLayout, features_as_list

__all__ = ["EncoderOnlyQwen2VLBackbone", "Qwen2VLBackbone", "mrope_token_types"]


def mrope_token_types(
    input_ids: torch.Tensor, image_token_id: int, image_lengths: Sequence[int], grid_lengths: Sequence[int]
) -> torch.Tensor:
    """``mm_token_type_ids`` for rows whose image runs may begin with safety tokens.

    Image ``i`` (in order across the rows) is a run of ``image_lengths[i]`` consecutive image tokens whose last
    ``grid_lengths[i]`` are its merged patches (type 1) and whose first ones the guard's safety tokens (type 0,
    text-like positions).
    """
    types = torch.zeros_like(input_ids)
    image = 0
    for row, ids in enumerate(input_ids.tolist()):
        position = 0
        while position < len(ids):
            if ids[position] != image_token_id:
                position += 1
                continue
            end = position
            while end < len(ids) and ids[end] == image_token_id:
                end += 1
            if image >= len(image_lengths) or end - position != image_lengths[image]:
                raise InvalidInputError(
                    f"an image run of {end - position} tokens in row {row} does not match image {image}'s embeddings"
                )
            types[row, end - grid_lengths[image] : end] = 1
            image, position = image + 1, end
    if image != len(image_lengths):
        raise InvalidInputError(f"the rows hold {image} image runs for {len(image_lengths)} images")
    return types


@register_backbone
class Qwen2VLBackbone(Backbone):
    """Hugging Face Qwen2-VL: native-resolution patches, 2 x 2 merger, M-RoPE positions for image tokens."""

    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    image_input_names = ("image_grid_thw",)
    derived_input_names = ("mm_token_type_ids",)
    unjudged_input_names = ("pixel_values_videos", "video_grid_thw")
    unquantized_modules = ("model.visual", "lm_head")  # the tower holds the merger
    safety_grid_side: ClassVar[int] = 24
    """Side of the square grid the safety projector sees (every image's patch grid is pooled onto it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._parts = getattr(self.base_model, "model", self.base_model)
        self._merge = int(self.config.vision_config.spatial_merge_size)

    @property
    def vision_tower(self) -> nn.Module:
        return self._parts.visual if hasattr(self._parts, "visual") else self._parts.vision_tower

    @property
    def vision_hidden_size(self) -> int:
        return self.config.vision_config.embed_dim

    @property
    def num_patches(self) -> int:
        return self.safety_grid_side**2

    @property
    def resolution_unit(self) -> tuple[int, int]:
        """The tower's patch and the processor's grid (``patch_size * merge_size``): images keep their size."""
        patch = int(self.config.vision_config.patch_size)
        return patch, patch * self._merge

    # ------------------------------------------------------------------ vision
    def preprocess(self, processor: Any, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        out = image_processor_outputs(processor, images, self.family)
        if "image_grid_thw" not in out:
            raise ProcessorError(
                f"the processor gives no image_grid_thw: it is not a {self.family!r} processor (another model's)"
            )
        pixel_values, grids = torch.as_tensor(out["pixel_values"]), torch.as_tensor(out["image_grid_thw"])
        self._check_grids(pixel_values, grids)
        return {"pixel_values": pixel_values, "image_grid_thw": grids}

    def encode_images(self, pixel_values: torch.Tensor, **image_kwargs: torch.Tensor) -> VisionFeatures:
        grids = image_kwargs.get("image_grid_thw")
        if grids is None:
            raise InvalidInputError(f"{self.family} needs image_grid_thw with pixel_values")
        grids = torch.as_tensor(grids).long()
        self._check_grids(pixel_values, grids)
        tower = self.vision_tower
        param = next(tower.parameters())
        hidden, selected = self._tower_pass(tower, pixel_values.to(param.device, param.dtype), grids.to(param.device))
        counts = [int(g.prod()) for g in grids]
        patches = [
            pool_to_square_grid(self._patch_grid(chunk, grid), self.safety_grid_side)
            for chunk, grid in zip(torch.split(hidden, counts), grids.tolist())
        ]
        return VisionFeatures(patches=torch.stack(patches), selected=selected, tiles=tuple(counts), image_sizes=grids)

    def project(self, features: VisionFeatures) -> list[torch.Tensor]:
        """The merger's embeddings, one ``(t * h * w / merge^2, D)`` tensor per image."""
        if features.tiles is None:
            raise InvalidInputError(f"{self.family} features must carry the patch count per image")
        merger = self.vision_tower.merger
        param = next(merger.parameters())
        merged = merger(self._last_hidden(features.selected).to(param.device, param.dtype))
        return list(torch.split(merged, [n // self._merge**2 for n in features.tiles]))

    # ------------------------------------------------------------------ the language model's input
    def image_layout(self, features: VisionFeatures, image_embeds: Sequence[torch.Tensor]) -> ImageLayout:
        """The default runs, with model inputs that know the batch's grids (for M-RoPE)."""
        if features.image_sizes is None:
            raise InvalidInputError(f"{self.family} features must carry image_grid_thw")
        layout = super().image_layout(features, image_embeds)
        return ImageLayout(
            image_token_id=layout.image_token_id,
            runs=layout.runs,
            placeholder_id=layout.placeholder_id,
            model_inputs=partial(self._model_inputs, features),
        )

    def _model_inputs(
        self, features: VisionFeatures, image_features: Sequence[torch.Tensor], input_ids: torch.Tensor
    ) -> dict[str, Any]:
        """The features, ``image_grid_thw`` and ``mm_token_type_ids`` (safety tokens typed as text)."""
        grids = features.image_sizes
        grid_lengths = [int(g.prod()) // self._merge**2 for g in grids]
        types = mrope_token_types(input_ids, self.image_token_id, [len(f) for f in image_features], grid_lengths)
        return {
            **features_as_list(image_features, input_ids),
            "image_grid_thw": grids.to(input_ids.device),
            "mm_token_type_ids": types,
        }

    # ------------------------------------------------------------------ helpers
    def _tower_pass(
        self, tower: nn.Module, pixel_values: torch.Tensor, grids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden state before the merger, what :meth:`project` reads), in the processor's patch order."""
        hidden = self._unmerged(tower, pixel_values, grids)
        return hidden, hidden

    def _last_hidden(self, selected: torch.Tensor) -> torch.Tensor:
        """The merger's input inside ``VisionFeatures.selected``."""
        return selected

    def _unmerged(self, tower: nn.Module, pixel_values: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        """The tower's last hidden state before the merger, in the processor's (merge-block) patch order."""
        return tower(pixel_values, grid_thw=grids, return_dict=True).last_hidden_state

    def _patch_grid(self, hidden: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """(t * h * w, C) features in merge-block order -> the first frame's (h, w, C) patch grid."""
        t, h, w = grid
        m = self._merge
        blocks = hidden.reshape(t, h // m, w // m, m, m, hidden.shape[-1])
        return blocks.permute(0, 1, 3, 2, 4, 5).reshape(t, h, w, hidden.shape[-1])[0]

    def _check_grids(self, pixel_values: torch.Tensor, grids: torch.Tensor) -> None:
        if pixel_values.dim() != 2 or grids.dim() != 2 or grids.shape[-1] != 3:
            raise InvalidInputError(
                f"{self.family} takes pixel_values (patches, C) and image_grid_thw (images, 3), got "
                f"{tuple(pixel_values.shape)} and {tuple(grids.shape)}"
            )
        if int(grids.prod(-1).sum()) != pixel_values.shape[0] or bool((grids[:, 1:] % self._merge).any()):
            raise InvalidInputError(
                f"image_grid_thw {grids.tolist()} does not fit {pixel_values.shape[0]} patches in "
                f"{self._merge} x {self._merge} blocks: pixel_values and image_grid_thw do not belong together"
            )


@register_backbone
class EncoderOnlyQwen2VLBackbone(EncoderOnlyBackbone, Qwen2VLBackbone):
    """Classifier-only: the tower and token embeddings alone; fingerprints as ``'qwen2_vl'``, like the full model.

    The tower keeps its merger (the classifier reads the features before it).
    """

    # transformers 5 writes Qwen2-VL's legacy layout (visual.*, model.embed_tokens) and reads both.
    tower_checkpoint_prefixes = ("model.visual.", "visual.")
    embedding_checkpoint_keys = ("model.language_model.embed_tokens.weight", "model.embed_tokens.weight")

    @classmethod
    def tower_from_config(cls, vision_config: Any) -> nn.Module:
        """Qwen2-VL's vision transformer (which ``AutoModel`` does not map), as ``Qwen2VLModel`` builds it."""
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

        return Qwen2VisionTransformerPretrainedModel._from_config(vision_config)
