"""Tiny random models of any image-text-to-text family of the installed transformers, built from its configs.

:func:`build_tiny_family` takes a ``model_type`` of ``MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES`` and builds,
offline, a model with random weights from the family's own config classes (every sub-config shrunk:
:mod:`psaguard.testing.shrink`) and a processor from the family's own processor class over its PIL image
processor and the tiny word-level tokenizer, which learns the family's special tokens from the processor itself
(:mod:`psaguard.testing.processors`). The generic build names no family; :data:`LAYOUTS` says, by name, what a
family adapter's own tests need beyond it. What cannot be built raises :class:`TinyBuildError` saying why.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from psaguard.testing.llava import init_tiny_model, save_pretrained_pair
from psaguard.testing.processors import build_processor, probe
from psaguard.testing.shrink import TinyBuildError, default_config, meta_config, tiny_config, updated
from psaguard.tokenization import render_chat

__all__ = [
    "LAYOUTS",
    "TinyBuild",
    "TinyBuildError",
    "TinyLayout",
    "build_meta_model",
    "build_tiny_family",
    "image_text_to_text_types",
    "save_tiny_family",
]


@dataclass(frozen=True)
class TinyLayout:
    """What a family adapter's own tests need of its tiny pair beyond the generic shrinking."""

    config: Mapping[str, Any] = field(default_factory=dict)
    """Set over the family's default config before anything is built (a dict updates that sub-config)."""
    image_processor: Mapping[str, Any] = field(default_factory=dict)
    """Set on the image processor after its sizes are shrunk (a dict updates that size)."""
    tokens: Mapping[str, str] = field(default_factory=dict)
    """Named tokens the real tokenizer has that the processor does not name (the template writes them)."""
    words: tuple[str, ...] = ()
    """Plain words the processor writes (added to the tiny vocabulary)."""
    model_type: str | None = None
    """The model type built where the layout's name is a variant; ``processor_type``: the one whose processor."""
    processor_type: str | None = None


_PATCH_4 = {"vision_config": {"patch_size": 4}}
_TILES_4 = {"max_patches": 4}
_TILE_TAGS = {f"row_{i}_col_{j}_token": f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)}
_IMAGE_MARKS = {"image_start_token": "<|begin_of_image|>", "image_end_token": "<|end_of_image|>"}
_VISION_MARKS = {"vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}
_PIXTRAL_TOWER = {"model_type": "pixtral", "patch_size": 4}

LAYOUTS: dict[str, TinyLayout] = {
    # 4 px patches: the tests' 24 to 64 px images span several merge blocks, windows, rows and tiles.
    "qwen2_vl": TinyLayout(_PATCH_4, tokens=_VISION_MARKS),
    "qwen2_5_vl": TinyLayout({"vision_config": {"patch_size": 4, "window_size": 16}}, tokens=_VISION_MARKS),
    "qwen3_vl": TinyLayout({"vision_config": {"patch_size": 4, "deepstack_visual_indexes": [0]}}, tokens=_VISION_MARKS),
    "glm4v": TinyLayout(_PATCH_4, {"size": {"shortest_edge": 32 * 32}}, tokens=_IMAGE_MARKS),  # min 32 x 32 px
    "mistral3": TinyLayout(_PATCH_4),
    "idefics3": TinyLayout(_PATCH_4, {"size": {"longest_edge": 64}}, tokens=_TILE_TAGS),  # 2 x 2 tiles + global
    "smolvlm": TinyLayout(_PATCH_4, {"size": {"longest_edge": 64}}, tokens=_TILE_TAGS),
    "internvl": TinyLayout({"vision_config": {"patch_size": [4, 4]}}, _TILES_4),
    "aya_vision": TinyLayout(_PATCH_4, _TILES_4, words=("TILE", "GLOBAL", "_", *(str(i) for i in range(1, 13)))),
    "llava_next": TinyLayout(  # 32 px tiles of 4 px patches; any-resolution grids of one or two tiles
        {"vision_config": {"image_size": 32, "patch_size": 4}, "image_grid_pinpoints": [[32, 32], [64, 32], [32, 64]]}
    ),
    "llava_pixtral": TinyLayout(  # a LLaVA with a Pixtral tower and processor (the pixtral-12b layout)
        {"vision_config": _PIXTRAL_TOWER, "vision_feature_layer": -1, "vision_feature_select_strategy": "full"},
        model_type="llava",
        processor_type="pixtral",
    ),
}
"""Per-family layouts by name; a name that is no model type (``llava_pixtral``) is a variant of one."""

_SEQUENCE_LENGTHS = ("image_seq_length", "image_seq_len", "num_image_tokens")
"""Processor settings holding the image tokens per image (or per tile) that a checkpoint records from its model."""
_SIDE_LENGTH = "patch_size"
"""Processor setting that may hold the image tokens per tile side instead (a square tile's tokens are its square)."""
_PROBE_SIZE = (56, 40)


@dataclass(frozen=True)
class TinyBuild:
    """A family's tiny model and processor (not saved)."""

    model_type: str
    model: Any
    processor: Any


def image_text_to_text_types() -> list[str]:
    """Every ``model_type`` of the installed transformers' ``MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES``, sorted."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return sorted(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def save_tiny_family(
    model_type: str, path: str | Path, seed: int = 1, overrides: Mapping[str, Any] | None = None
) -> Path:
    """Build ``model_type``'s tiny pair and save it to ``path`` (Hugging Face format); return the path.

    :class:`TinyBuildError` where the processor cannot be saved: one whose video or audio parts were left out
    (they need torchvision) saves only with them. Tests use the in-memory pair of :func:`build_tiny_family`.
    """
    build = build_tiny_family(model_type, seed, overrides)
    try:
        return save_pretrained_pair(path, build.model, build.processor)
    except (AttributeError, TypeError, ValueError) as err:
        raise TinyBuildError(
            f"the tiny processor of {model_type!r} cannot be saved without its left-out parts: {err}"
        ) from err


def build_tiny_family(
    model_type: str, seed: int = 1, overrides: Mapping[str, Any] | None = None, *, layout: bool = True
) -> TinyBuild:
    """The tiny model and processor of ``model_type`` (or of a :data:`LAYOUTS` variant's name);
    :class:`TinyBuildError` if they cannot be built here.

    ``overrides``: config values set over the default and the shrunk ones (a dict value updates that sub-config),
    for a test that needs a property the generic shrinking does not give (e.g. VipLLaVA features of two different
    layers). The family's layout in :data:`LAYOUTS` is applied first unless ``layout`` is false (the generic build
    alone, as the conformance sweep over every family uses it).
    """
    shape = LAYOUTS.get(model_type, TinyLayout()) if layout else TinyLayout()
    model_type = shape.model_type or model_type
    model_class = _model_class(model_type)
    default = default_config(model_type)
    if shape.config or overrides:  # before the processor is built: its geometry follows the tower's
        default = type(default).from_dict(updated(updated(default.to_dict(), shape.config), overrides or {}))
    processor_type = shape.processor_type or model_type
    processor, placeholder, image_id = build_processor(
        processor_type, default, shape.image_processor, shape.words, shape.tokens
    )
    config = tiny_config(default, processor, image_id, "mrope" in inspect.getsource(inspect.getmodule(model_class)))
    if overrides:
        config = type(config).from_dict(updated(config.to_dict(), overrides))
    try:
        model = init_tiny_model(model_class, config, processor.tokenizer, seed)
    except Exception as err:  # a config this generic shrinking does not fit
        raise TinyBuildError(f"the model cannot be built from the shrunk config: {type(err).__name__}: {err}") from err
    return TinyBuild(model_type, _fitted(model, processor, placeholder, seed), processor)


def _fitted(model: Any, processor: Any, placeholder: str, seed: int) -> Any:
    """``model`` and ``processor`` made consistent (image tokens per tile, pixel dtype), checked to generate."""
    _randomize_zero_projections(model, seed)
    if "mm_token_type_ids" in inspect.signature(model.forward).parameters:
        processor.return_mm_token_type_ids = True  # M-RoPE positions need them (a checkpoint's processor config)
    _calibrate(model, processor, placeholder)
    if (dtype := _pixel_dtype(processor, placeholder)) is not None and dtype != model.dtype:
        model = model.to(dtype)  # a processor that gives pixels in the checkpoint's dtype (Llama 4's bfloat16)
    _check_generates(model, processor)
    return model


def build_meta_model(model_type: str) -> Any:
    """``model_type``'s model on the meta device from its shrunk default config, without a processor (no
    weights; for asking an adapter whether it supports the family when no tiny pair can be built)."""
    model_class = _model_class(model_type)
    default = default_config(model_type)
    try:
        config = meta_config(default)
        with torch.device("meta"):
            return model_class(config)
    except Exception as err:
        raise TinyBuildError(f"the model cannot be built from its shrunk config: {type(err).__name__}: {err}") from err


def _model_class(model_type: str) -> type:
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    class_name = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(model_type)
    if class_name is None:
        raise TinyBuildError(f"{model_type!r} is not an image-text-to-text model type of this transformers")
    if (model_class := getattr(transformers, class_name, None)) is None:
        raise TinyBuildError(f"transformers does not export {class_name}")
    return model_class


def _randomize_zero_projections(model: Any, seed: int) -> None:
    """Seeded random values for a projector weight its family initializes to zeros (Gemma 3's image projection):
    at zero every image embeds alike, the answer would not depend on it and parity tests would compare nothing."""
    scale = 10 * getattr(model.config, "initializer_range", 0.02)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "projector" in name and param.dim() >= 2 and not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * scale)


def _pixel_dtype(processor: Any, placeholder: str) -> torch.dtype | None:
    """The floating dtype of the processor's pixel values for one image (None where it cannot be read)."""
    out = probe(processor, placeholder, _PROBE_SIZE) or {}
    pixels = next((v for k, v in out.items() if k.startswith("pixel_values") and torch.is_tensor(v)), None)
    return pixels.dtype if pixels is not None and pixels.is_floating_point() else None


def _check_generates(model: Any, processor: Any) -> None:
    """:class:`TinyBuildError` unless the tiny model generates on its processor's output for a chat prompt."""
    from PIL import Image

    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this ?"}]}]
    text = render_chat(processor, conversation)
    try:
        inputs = processor(images=[Image.new("RGB", _PROBE_SIZE, (200, 30, 30))], text=text, return_tensors="pt")
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
    except Exception as err:  # the tiny pair is inconsistent: a shrinking this builder does not get right
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise TinyBuildError(
            f"the tiny model does not run on its processor's output: {type(err).__name__}: {first}"
        ) from err


def _calibrate(model: Any, processor: Any, placeholder: str) -> None:
    """Make the processor write as many image tokens per tile as the shrunk model gives features per tile.

    Families that pool or pixel-shuffle their tiles record the resulting count in the processor's config;
    the tiny model's count follows from its shrunk sizes, so the processor's is set from one probe image.
    """
    name = next((n for n in _SEQUENCE_LENGTHS if isinstance(getattr(processor, n, None), int)), None)
    side = getattr(processor, _SIDE_LENGTH, None)
    out = probe(processor, placeholder, _PROBE_SIZE) if name or isinstance(side, int) else None
    if out is None or not (features := _feature_count(model, out)):
        return
    tokens = int((out["input_ids"] == getattr(model.config, "image_token_id", None)).sum())
    if name is None:  # tokens per tile side (Cohere2-Vision): tiles of side x side tokens
        _calibrate_side(processor, tokens, features, side)
    else:
        _calibrate_count(processor, name, tokens, features)


def _calibrate_count(processor: Any, name: str, tokens: int, features: int) -> None:
    """Set the processor's image tokens per tile (its ``name``) where they do not match the model's features."""
    per_tile = getattr(processor, name)
    if tokens and tokens != features and tokens % per_tile == 0 and features % (tokens // per_tile) == 0:
        setattr(processor, name, features // (tokens // per_tile))


def _feature_count(model: Any, out: Mapping[str, Any]) -> int:
    """Image features the model gives for the processor's ``out`` (0 where its ``get_image_features`` fails)."""
    image_inputs = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask") and "token_type" not in k}
    try:
        with torch.no_grad():
            pooled = model.model.get_image_features(**image_inputs, return_dict=True).pooler_output
    except Exception:
        return 0
    parts = pooled if isinstance(pooled, (list, tuple)) else [pooled] if torch.is_tensor(pooled) else []
    return sum(p.reshape(-1, p.shape[-1]).shape[0] for p in parts)


def _calibrate_side(processor: Any, tokens: int, features: int, side: int) -> None:
    """Set the processor's tokens per tile side where its tiles of ``side`` x ``side`` tokens do not match the
    model's features (left as it is where they match: Pixtral's ``patch_size`` is a pixel size)."""
    if not tokens or tokens == features or tokens % (side * side):
        return
    tiles = tokens // (side * side)
    new_side = math.isqrt(features // tiles) if features % tiles == 0 else 0
    if new_side and new_side * new_side * tiles == features:
        setattr(processor, _SIDE_LENGTH, new_side)
