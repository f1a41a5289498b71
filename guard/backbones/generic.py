"""The generic adapter: every model that follows transformers' multimodal interface, with no family code.

transformers 5 models of the LLaVA style share one interface, which this adapter uses and nothing else:

* ``get_image_features(pixel_values, **image_inputs)`` on the multimodal model returns the projected
  features per image (``pooler_output``: a list of ``(L_i, D)`` tensors or one stacked tensor) and the
  tower's per-patch states (``last_hidden_state``), in one vision pass;
* ``forward(input_ids, ..., mm_encoder_outputs={"image": ...})`` takes those features precomputed, with
  ``input_ids`` kept, scattering them into the positions where ``input_ids == config.image_token_id``.

Everything else is read from the model's own processor: which token the chat template writes per image
(the one the processor expands into the image's run), each image's run (the processor's expansion of it,
wrapper and row-break tokens included), and which extra inputs ride along (``image_grid_thw``,
``image_sizes``, token types, ...). The guard's K safety tokens are K more image-token ids before each
image's first image token, paired with K rows in front of that image's features and typed as text where the
processor writes token types (so M-RoPE families give them text positions). Features are split per image by
the runs' image-token counts, never by contiguous placeholder runs (row breaks split one image's run).

The safety projector sees the tower's per-patch states of each image (:mod:`~psaguard.backbones.generic_layout`)
pooled onto a square grid. Family adapters built on this one override only its hooks (docs/adapters.md).
Models outside the mechanism are refused with the reason (:meth:`GenericBackbone.why_unsupported`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from psaguard.backbones.base import Backbone, VisionFeatures, unwrap_model
from psaguard.backbones.generic_layout import (
    GenericFeatures,
    features_of,
    image_positions,
    is_per_image,
    num_images_of,
    per_image_outputs,
    pool_sequence_to_square,
    select_feature_layers,
    shared_outputs,
    split_features,
    split_patches,
    square_side,
    to_square,
    widened,
)
from psaguard.backbones.generic_processor import (
    CROSS_ATTENTION_TYPES,
    PIXEL_NAMES,
    PREFIX_LM_TYPES,
    RUNS,
    find_placeholder,
    image_token_id_of,
    model_parts,
    process_images,
    processor_runs,
    stored_runs,
    token_type_rule,
    unsupported_reason,
)
from psaguard.backbones.registry import register_backbone
from psaguard.errors import InvalidInputError, ProcessorError, UnsupportedModelError
from psaguard.injection import ImageLayout, features_as_tensor

__all__ = [
    "CROSS_ATTENTION_TYPES",
    "PREFIX_LM_TYPES",
    "GenericBackbone",
    "GenericFeatures",
    "pool_sequence_to_square",
    "unsupported_reason",
]

_TOWER_NAMES = ("vision_tower", "visual", "vision_model", "vision_encoder", "image_tower", "vision", "embed_vision")
_TOKEN_TYPE_NAMES = ("mm_token_type_ids", "moe_mm_token_type_ids", "token_type_ids")
"""Token types the processor writes and the guard rebuilds for its own input (ERNIE-4.5-VL types its experts too)."""
_PROBE = (64, 48)  # width, height of the probe image checks run on


@register_backbone
class GenericBackbone(Backbone):
    """Any LLaVA-style model exposing ``get_image_features`` and ``mm_encoder_outputs`` (see the module doc).

    The registry asks it last (``fallback``), so a family adapter, where one exists, wins. Its fingerprint's
    family is the model's ``model_type``, so a guard trained on one family refuses another. A family adapter
    built on it sets ``fallback = False`` (it then dispatches on ``model_types`` and keeps its ``family``) and
    overrides only the hooks it needs: the class attributes below and the methods docs/adapters.md lists.
    """

    family = "generic"
    model_types = ("any model following transformers' multimodal interface",)
    fallback = True
    image_input_names = (
        *("image_grid_thw", "image_sizes", "pixel_attention_mask", "spatial_shapes", "image_position_ids"),
        *("image_merge_sizes", "batch_num_images", "high_res_pixel_values", RUNS),
    )
    derived_input_names = _TOKEN_TYPE_NAMES
    unjudged_input_names = ("pixel_values_videos", "video_grid_thw", "pixel_values_images")
    """Videos, and images under another name than ``pixel_values`` (which ``wrap()`` would not judge: refused)."""
    max_grid_side: ClassVar[int | None] = 24
    """Largest side of the square grid the safety projector sees (the tower's own grid where smaller); None: the
    tower's own grid whatever its size (the LLaVA-style adapters, whose guards were trained on it)."""
    safety_token_type: ClassVar[int] = 0
    """Type of the guard's safety rows where the processor types image tokens 1 (0: text-like, as M-RoPE needs)."""
    required_image_inputs: ClassVar[tuple[str, ...]] = ()
    """Image inputs without which the family's vision pass cannot run (refused up front with InvalidInputError)."""
    feature_layers: ClassVar[bool] = False
    """Whether the safety projector reads the states the model's projector reads (``config.vision_feature_layer``,
    CLS dropped per :attr:`feature_strategy`) rather than the tower's last state (LLaVA-style families)."""
    view_tile: ClassVar[int | None] = None
    """Where an image is several tiles of one tower pass: the tile the safety projector reads (0: the first,
    LLaVA-NeXT's base view; -1: the last, a global view); None: the image's states as :meth:`image_patches` lays
    them out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        if self.fallback:
            self.family = self.config.model_type
        self._parts = model_parts(self.base_model)
        self._placeholder: tuple[str, int] | None = None
        self._token_types: dict[str, str] = {}
        self._vision_hidden: int | None = None
        self._probed: Any = None  # the processor the probe pass ran with
        self._stacked = False  # whether get_image_features gives one tensor (the forward then takes one too)
        self._output_class: type = BaseModelOutputWithPooling

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return cls.why_unsupported(model) is None if cls.fallback else super().supports(model)

    @classmethod
    def why_unsupported(cls, model: nn.Module) -> str | None:
        return unsupported_reason(unwrap_model(model)) if cls.fallback else None

    # ------------------------------------------------------------------ sizes
    @property
    def vision_tower(self) -> nn.Module:
        return next(m for name in _TOWER_NAMES if isinstance(m := getattr(self._parts, name, None), nn.Module))

    @property
    def vision_hidden_size(self) -> int:
        """Width of the tower's per-patch states (measured on the processor's probe image at attach)."""
        if self._vision_hidden is None:
            vision = getattr(self.config, "vision_config", None)
            width = getattr(vision, "embed_dim", None) or getattr(vision, "hidden_size", None)
            if width is None:
                raise UnsupportedModelError(
                    f"{self.config.model_type}: its vision config names no single tower width, which is only "
                    "measured by a probe pass of the full model (attach), not from the config alone"
                )
            return int(width)
        return self._vision_hidden

    @property
    def num_patches(self) -> int:
        vision = getattr(self.config, "vision_config", None)
        size, patch = getattr(vision, "image_size", None), getattr(vision, "patch_size", None)
        if self.max_grid_side is None:  # the tower's own grid; some towers' configs give (height, width) pairs
            return (square_side(size) // square_side(patch)) ** 2
        side = self.max_grid_side
        if isinstance(size, int) and isinstance(patch, int) and patch > 0:
            side = max(1, min(side, size // patch))
        return side * side

    @property
    def image_token_id(self) -> int:
        return image_token_id_of(self.config)

    @property
    def placeholder_token_id(self) -> int:
        return self.image_token_id if self._placeholder is None else self._placeholder[1]

    # ------------------------------------------------------------------ the processor
    def read_processor(self, processor: Any) -> None:
        """Find what the chat template writes per image, and its placeholder: the token the processor expands.

        The template's text for an image part (e.g. ``<|vision_start|><|image_pad|><|vision_end|>``) is read
        by rendering a turn with and without an image; its placeholder is the image token where the text holds
        it, else its one special token (Gemma 3's ``<start_of_image>``, which the processor replaces by the run).
        """
        self._placeholder = find_placeholder(processor, self.image_token_id, self.family)
        inputs = self.preprocess(processor, [Image.new("RGB", _PROBE)])
        if not inputs[RUNS].eq(self.image_token_id).any():
            raise ProcessorError(f"the processor writes no image tokens (id {self.image_token_id}) for an image")

    def preprocess(self, processor: Any, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        """The processor's image inputs and each image's run, from the processor run on one image part each."""
        if self._placeholder is None:
            self.read_processor(processor)
        text, token_id = self._placeholder
        tokenizer = processor.tokenizer
        out = process_images(processor, [text] * len(images), images, self.family)
        pixels = next((name for name in PIXEL_NAMES if name in out), None)
        if pixels is None:
            raise ProcessorError(f"the processor gives no pixel values: it is not a {self.family!r} processor")
        runs = processor_runs(out, tokenizer(text)["input_ids"], token_id, self.image_token_id, self.family)
        inputs = {"pixel_values": out[pixels], RUNS: runs}
        input_ids, mask = out["input_ids"], out["attention_mask"].bool()
        for name, value in out.items():
            if name in ("input_ids", "attention_mask", *PIXEL_NAMES) or not torch.is_tensor(value):
                continue
            if name.endswith("token_type_ids"):  # token types: the guard rebuilds them for its own input
                self._token_types[name] = token_type_rule(value, input_ids, mask, self.image_token_id)
            else:
                inputs[name] = value
        return inputs

    # ------------------------------------------------------------------ vision
    def encode_images(self, pixel_values: torch.Tensor, **image_inputs: torch.Tensor) -> GenericFeatures:
        self._check_inputs(pixel_values, image_inputs)
        runs = stored_runs(image_inputs.pop(RUNS, None))
        num_images = len(runs) if runs is not None else num_images_of(pixel_values, image_inputs)
        counts = None if runs is None else [run.count(self.image_token_id) for run in runs]
        out, hidden = self.tower_pass(pixel_values, image_inputs)
        embeds = () if out.pooler_output is None else tuple(split_features(out.pooler_output, num_images, counts))
        lengths = counts if counts is not None else [len(e) for e in embeds]
        side = math.isqrt(self.num_patches)
        patches = torch.stack([to_square(p, side) for p in self.image_patches(hidden, image_inputs, lengths)])
        self._check_width(patches)
        forward_inputs = self._accepted(self._parts.forward, image_inputs)
        return GenericFeatures(
            patches=patches,
            selected=patches,
            embeds=embeds,
            runs=runs,
            image_inputs={k: v for k, v in forward_inputs.items() if is_per_image(v, num_images)},
            side_features=per_image_outputs(out, lengths),
            shared_outputs=shared_outputs(out, lengths),
        )

    def _check_inputs(self, pixel_values: torch.Tensor, image_inputs: dict[str, torch.Tensor]) -> None:
        """:attr:`required_image_inputs` present, flat patches matching ``image_grid_thw``, native ``image_sizes``
        on the processor's grid (:attr:`resolution_unit`)."""
        if missing := [name for name in self.required_image_inputs if image_inputs.get(name) is None]:
            raise InvalidInputError(f"{self.family} needs {missing} with pixel_values")
        grids = image_inputs.get("image_grid_thw")
        if grids is not None and pixel_values.dim() == 2 and int(grids.prod(-1).sum()) != len(pixel_values):
            raise InvalidInputError(
                f"image_grid_thw {grids.tolist()} does not fit {len(pixel_values)} patches: pixel_values and "
                "image_grid_thw do not belong together"
            )
        sizes, unit = image_inputs.get("image_sizes"), self.resolution_unit
        if sizes is not None and unit is not None and bool((torch.as_tensor(sizes) % unit[1]).any()):
            raise InvalidInputError(f"image_sizes {sizes.tolist()} are not multiples of the {unit[1]} px grid")

    def _check_width(self, patches: torch.Tensor) -> None:
        if self._vision_hidden is not None and patches.shape[-1] != self._vision_hidden:
            raise InvalidInputError(f"the tower gives {patches.shape[-1]}-wide states, not {self._vision_hidden}")

    def tower_pass(self, pixel_values: torch.Tensor, image_inputs: dict[str, torch.Tensor]) -> tuple[Any, Any]:
        """The one vision pass: (``get_image_features``'s output, the tower states the safety projector reads).

        Hook: the states default to the output's ``last_hidden_state`` (its ``pooler_output`` without one). A
        classifier-only model is the family's own model class, so it makes its features the same way.
        """
        param = next(self.vision_tower.parameters())
        get_image_features = self._parts.get_image_features
        inputs = self._accepted(get_image_features, image_inputs)
        out = get_image_features(pixel_values=_to(pixel_values, param), **inputs, return_dict=True)
        self._stacked = torch.is_tensor(out.pooler_output)
        self._output_class = type(out)
        if self.feature_layers:
            layer, strategy = self.config.vision_feature_layer, self.feature_strategy
            return out, select_feature_layers(out.hidden_states, layer, strategy)
        hidden = getattr(out, "last_hidden_state", None)
        return out, hidden if hidden is not None else out.pooler_output

    @property
    def feature_strategy(self) -> str:
        """With :attr:`feature_layers`: ``'default'`` drops each layer's CLS token, ``'full'`` keeps it."""
        return getattr(self.config, "vision_feature_select_strategy", "default")

    def tile_counts(self, tiles: int, image_inputs: dict[str, torch.Tensor], lengths: Sequence[int]) -> list[int]:
        """With :attr:`view_tile`: each image's tile count among the pass's ``tiles``. Hook: every tile makes
        equally many embeddings."""
        per_tile = sum(lengths) // tiles
        if per_tile * tiles != sum(lengths) or any(n % per_tile for n in lengths):
            raise InvalidInputError(f"{list(lengths)} image features do not split into {tiles} equal tiles")
        return [n // per_tile for n in lengths]

    def image_patches(
        self, hidden: Any, image_inputs: dict[str, torch.Tensor], lengths: Sequence[int]
    ) -> list[torch.Tensor]:
        """Each image's tower states: an (H, W, C) grid or an (N, C) sequence. The spatial-layout hook.

        ``lengths``: each image's embedding count. Default: the first layout of
        :func:`~psaguard.backbones.generic_layout.split_patches` that fits (stacked sequences, feature maps, flat
        states with ``image_grid_thw`` in merge-block order or merged, flat states with ``image_sizes``).
        """
        if self.view_tile is not None:
            counts = self.tile_counts(len(hidden), image_inputs, lengths)
            ends = torch.tensor(counts).cumsum(0)
            return list(hidden[ends - 1 if self.view_tile == -1 else ends - torch.tensor(counts)])
        vision = getattr(self.config, "vision_config", None)
        return split_patches(hidden, image_inputs, lengths, vision, self.family)

    def check_processor(self, processor: Any) -> None:
        """The tokenizer checks and one probe pass through the tower (its width measured), once per processor
        (classifiers share it)."""
        if processor is not None and processor is self._probed:
            return
        self.check_tokenizer(processor)
        try:
            with torch.inference_mode():
                features = self.encode_images(**self.preprocess(processor, [Image.new("RGB", _PROBE)]))
        except (RuntimeError, ValueError, IndexError) as err:  # its inputs do not fit this model's tower
            raise ProcessorError(
                f"the processor's images do not fit a {self.family!r} model (another model's?): {err}"
            ) from err
        self._vision_hidden = int(features.patches.shape[-1])
        self._probed = processor

    # ------------------------------------------------------------------ the language model's input
    def project(self, features: VisionFeatures) -> list[torch.Tensor]:
        return list(features_of(features).embeds)

    def image_runs(self, features: VisionFeatures, image_embeds: Sequence[torch.Tensor]) -> list[list[int]]:
        runs = features_of(features).runs
        return super().image_runs(features, image_embeds) if runs is None else [list(run) for run in runs]

    def image_layout(self, features: VisionFeatures, image_embeds: Sequence[torch.Tensor]) -> ImageLayout:
        generic, lengths = features_of(features), [len(e) for e in image_embeds]
        placeholder = self.placeholder_token_id if generic.runs is not None else self.image_token_id
        model_inputs = partial(self._model_inputs, generic, lengths)
        return replace(
            super().image_layout(features, image_embeds), placeholder_id=placeholder, model_inputs=model_inputs
        )

    def _token_type_rules(self) -> dict[str, str]:
        """Token types to build: the processor's, and M-RoPE's ``mm_token_type_ids`` wherever ``forward`` takes
        them with ``image_grid_thw`` (some processors leave them to the caller)."""
        params = inspect.signature(self._parts.forward).parameters
        rules = dict(self._token_types)
        if "mm_token_type_ids" in params and "image_grid_thw" in params:
            rules.setdefault("mm_token_type_ids", "image")
        return rules

    def _model_inputs(
        self,
        features: GenericFeatures,
        lengths: Sequence[int],
        image_features: Sequence[torch.Tensor],
        input_ids: torch.Tensor,
    ) -> dict[str, Any]:
        """The features in ``mm_encoder_outputs``, the per-image inputs, and token types (safety rows as text)."""
        to_model = features_as_tensor if self._stacked else self.model_image_inputs
        image = to_model(image_features, input_ids)["mm_encoder_outputs"]["image"]
        if features.side_features or features.shared_outputs:
            side = {name: widened(layers, image_features) for name, layers in features.side_features.items()}
            image = self._output_class(pooler_output=image.pooler_output, **side, **features.shared_outputs)
        inputs = {
            "mm_encoder_outputs": {"image": image},
            **{name: value.to(input_ids.device) for name, value in features.image_inputs.items()},
        }
        return {**inputs, **self._token_type_inputs(input_ids, [len(f) for f in image_features], lengths)}

    def _token_type_inputs(
        self, input_ids: torch.Tensor, widened: Sequence[int], lengths: Sequence[int]
    ) -> dict[str, torch.Tensor]:
        """The token types the model takes: 1 at image features, safety rows typed :attr:`safety_token_type`."""
        rules = self._token_type_rules()
        if not rules:
            return {}
        is_image = image_positions(input_ids, self.image_token_id, widened, lengths)
        if self.safety_token_type:
            is_image = input_ids == self.image_token_id
        return {
            name: is_image.long() if rule == "image" else torch.zeros_like(input_ids) for name, rule in rules.items()
        }

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _accepted(function: Any, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        params = inspect.signature(function).parameters
        return {name: value for name, value in inputs.items() if name in params}


def _to(tensor: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    return tensor.to(param.device, param.dtype) if tensor.is_floating_point() else tensor.to(param.device)
