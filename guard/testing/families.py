"""Tiny random models of any image-text-to-text family of the installed transformers, built from its configs.

:func:`build_tiny_family` takes a ``model_type`` of ``MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES`` and builds,
offline, a model with random weights from the family's own config classes (every sub-config shrunk: few
layers, narrow widths, the tiny vocabulary) and a processor from the family's own processor class over its
PIL image processor (torchvision is not needed) and the tiny word-level tokenizer, which learns the
family's special tokens from the processor itself. Nothing here names a family: a family that a newer
transformers adds is built the same way. What cannot be built raises :class:`TinyBuildError` saying why.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from psaguard.errors import PsaGuardError
from psaguard.testing.llava import (
    TinyLlavaSpec,
    init_tiny_model,
    save_pretrained_pair,
    tiny_chat_template,
    tiny_tokenizer,
)
from psaguard.testing.torch_transforms import import_with_torch_transforms
from psaguard.tokenization import render_chat

__all__ = [
    "TinyBuild",
    "TinyBuildError",
    "build_meta_model",
    "build_tiny_family",
    "image_text_to_text_types",
    "save_tiny_family",
]

_WIDTH = 64
"""Width of every tower and language model (a multiple of 64, as the other tiny models)."""

_SHRINK: dict[str, int] = {
    "hidden_size": _WIDTH,
    "embed_dim": _WIDTH,
    "d_model": _WIDTH,
    "out_hidden_size": _WIDTH,
    "projection_dim": _WIDTH,
    "projection_hidden_size": _WIDTH,
    "projector_hidden_size": _WIDTH,
    "mm_embed_dim": _WIDTH,  # an encoder-free patch embedder (Gemma 4 Unified)
    "output_proj_dims": _WIDTH,
    "mm_posemb_size": 4 * _WIDTH,
    "merged_hidden_size": 4 * _WIDTH,  # a 2 x 2 merge of the tower's patches (MiniMax-M3-VL)
    "intermediate_size": 2 * _WIDTH,
    "intermediate_size_mlp": 2 * _WIDTH,
    "projection_intermediate_size": 2 * _WIDTH,
    "linear_num_heads": 4,  # linear-attention layers (GLM-5-Next)
    "linear_head_dim": _WIDTH // 4,
    "index_n_heads": 4,  # the sparse-attention indexer
    "index_head_dim": _WIDTH // 4,
    "mlp_dim": 2 * _WIDTH,
    "projector_input_dim": _WIDTH,
    "projector_output_dim": _WIDTH,
    "vision_output_dim": _WIDTH,
    "moe_intermediate_size": _WIDTH,
    "shared_expert_intermediate_size": _WIDTH,
    "num_attention_heads": 4,
    "num_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": _WIDTH // 4,
    "qk_rope_head_dim": _WIDTH // 4,  # multi-head latent attention (DeepSeek-V3): rotary part = head_dim
    "qk_nope_head_dim": _WIDTH // 4,
    "qk_head_dim": _WIDTH // 2,
    "v_head_dim": _WIDTH // 4,
    "kv_lora_rank": _WIDTH // 2,
    "q_lora_rank": _WIDTH // 2,
    "num_hidden_layers": 2,
    "depth": 2,
    "num_layers": 2,
    "num_experts": 4,
    "n_routed_experts": 4,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "first_k_dense_replace": 1,
    "n_group": 2,  # expert groups (DeepSeek-V3 routing): 2 of 2 experts each
    "topk_group": 1,
}
"""Config fields set to these values wherever they appear (the model's config and every sub-config)."""

_LAYER_INDEX_LISTS = (
    "deepstack_visual_indexes",
    "vision_feature_layer",
    "fullatt_block_indexes",
    "global_attn_indexes",
)
"""Config fields that list layer indices; they are kept within the shrunk depth."""

_TOKEN_SUFFIXES = ("_token",)
_MISSING_TOKEN = re.compile(
    r"(?:has no attribute|missing required attribute|does not have an) [`']?(\w+?_token)(?:_id)?[`']?"
)
_TEXT_TOKENS = frozenset({"pad_token", "bos_token", "eos_token", "unk_token", "sep_token", "cls_token", "mask_token"})
_GRID = 8
"""Patches per side of a tiny model's image (its tower's patch size is kept: processors derive from it)."""
_AREA_THRESHOLD = 10_000
"""Image-processor sizes at or above this are pixel areas (Qwen-VL's min / max pixels), left as they are."""
_CROP_FACTOR = 8
"""An image processor's ``patch_size`` this many tower patches wide or more is a crop size, not a patch."""
_TOKENS_PER_IMAGE = 16
"""Tokens per image where the config fixes the count (pooling the 8 x 8 grid to 4 x 4)."""


@dataclass(frozen=True)
class _Layout:
    """What a family adapter's own tests need of its tiny pair beyond the generic shrinking."""

    config: Mapping[str, Any] = field(default_factory=dict)
    """Set over the family's default config before anything is built (a dict updates that sub-config)."""
    image_processor: Mapping[str, Any] = field(default_factory=dict)
    """Set on the image processor after its sizes are shrunk."""
    words: tuple[str, ...] = ()
    """Plain words the processor writes (added to the tiny vocabulary)."""
    tokens: Mapping[str, str] = field(default_factory=dict)
    """Named tokens the checkpoint's tokenizer has and its template writes around each image (not the processor)."""
    model_type: str | None = None
    """The model type built, where the name is a variant of it; ``processor_type``: the one whose processor is used."""
    processor_type: str | None = None


_PATCH_4 = {"vision_config": {"patch_size": 4}}
_TILES_4 = {"max_patches": 4}
_TILE_TAGS = {f"row_{i}_col_{j}_token": f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)}
_IMAGE_MARKS = {"image_start_token": "<|begin_of_image|>", "image_end_token": "<|end_of_image|>"}
_VISION_MARKS = {"vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}
_LAYOUTS: dict[str, _Layout] = {
    # 4 px patches: the tests' 24 to 64 px images span several merge blocks, windows, rows and tiles.
    "qwen2_vl": _Layout(_PATCH_4, tokens=_VISION_MARKS),
    "qwen2_5_vl": _Layout({"vision_config": {"patch_size": 4, "window_size": 16}}, tokens=_VISION_MARKS),
    "qwen3_vl": _Layout({"vision_config": {"patch_size": 4, "deepstack_visual_indexes": [0]}}),
    "glm4v": _Layout(_PATCH_4, {"size": {"shortest_edge": 32 * 32}}, tokens=_IMAGE_MARKS),  # min pixels: 32 x 32
    "mistral3": _Layout(_PATCH_4),
    "idefics3": _Layout(_PATCH_4, {"size": {"longest_edge": 64}}, tokens=_TILE_TAGS),  # 2 x 2 tiles and a global view
    "smolvlm": _Layout(_PATCH_4, {"size": {"longest_edge": 64}}, tokens=_TILE_TAGS),
    "internvl": _Layout({"vision_config": {"patch_size": [4, 4]}}, _TILES_4),
    "aya_vision": _Layout(_PATCH_4, _TILES_4, words=("TILE", "GLOBAL", "_", *(str(i) for i in range(1, 13)))),
    "llava_pixtral": _Layout(  # LLaVA with a Pixtral tower (the pixtral-12b layout)
        {
            "vision_config": {"model_type": "pixtral", "patch_size": 4},
            "vision_feature_layer": -1,
            "vision_feature_select_strategy": "full",
        },
        model_type="llava",
        processor_type="pixtral",
    ),
}
"""Per-family layouts by name; a name that is no model type is a variant (``llava_pixtral``)."""


class TinyBuildError(PsaGuardError):
    """A family's tiny model or processor cannot be built here (the message says why)."""


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


def build_tiny_family(model_type: str, seed: int = 1, overrides: Mapping[str, Any] | None = None) -> TinyBuild:
    """The tiny model and processor of ``model_type``; :class:`TinyBuildError` if they cannot be built here.

    ``overrides``: config values set over the default and the shrunk ones (a dict value updates that sub-config),
    for a test that needs a property the generic shrinking does not give (e.g. VipLLaVA features of two different
    layers). A family's own tests' layout (:data:`_LAYOUTS`) is applied first.
    """
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    layout = _LAYOUTS.get(model_type, _Layout())
    model_type = layout.model_type or model_type
    class_name = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(model_type)
    if class_name is None:
        raise TinyBuildError(f"{model_type!r} is not an image-text-to-text model type of this transformers")
    model_class = getattr(transformers, class_name, None)
    if model_class is None:
        raise TinyBuildError(f"transformers does not export {class_name}")
    default = _default_config(model_type)
    if layout.config or overrides:  # before the processor is built: its geometry follows the tower's
        default = type(default).from_dict(_updated(_updated(default.to_dict(), layout.config), overrides or {}))
    processor, placeholder, image_id = _processor(layout.processor_type or model_type, default, layout)
    tok = processor.tokenizer
    config = _config(default, processor, image_id, mrope="mrope" in inspect.getsource(inspect.getmodule(model_class)))
    if overrides:
        config = type(config).from_dict(_updated(config.to_dict(), overrides))
    try:
        model = init_tiny_model(model_class, config, tok, seed)
    except Exception as err:  # a config this generic shrinking does not fit
        raise TinyBuildError(f"the model cannot be built from the shrunk config: {type(err).__name__}: {err}") from err
    _randomize_zero_projections(model, seed)
    if "mm_token_type_ids" in inspect.signature(model.forward).parameters:
        processor.return_mm_token_type_ids = True  # M-RoPE positions need them (a checkpoint's processor config)
    _calibrate(model, processor, placeholder)
    if (dtype := _pixel_dtype(processor, placeholder)) is not None and dtype != model.dtype:
        model = model.to(dtype)  # a processor that gives pixels in the checkpoint's dtype (Llama 4's bfloat16)
    _check_generates(model, processor)
    return TinyBuild(model_type, model, processor)


def _updated(values: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with ``overrides`` set over them; a dict override updates the sub-config dict it names."""
    out = dict(values)
    for key, value in overrides.items():
        sub = out.get(key)
        if (
            isinstance(value, Mapping)
            and isinstance(sub, dict)
            and value.get("model_type", sub.get("model_type")) != sub.get("model_type")
        ):
            sub = _default_config(value["model_type"]).to_dict()  # another tower (LLaVA with Pixtral's)
        out[key] = _updated(sub, value) if isinstance(value, Mapping) and isinstance(sub, dict) else value
    return out


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
    from PIL import Image

    for batch in ([[Image.new("RGB", (56, 40))]], [Image.new("RGB", (56, 40))]):
        try:
            out = processor(text=[placeholder], images=batch, return_tensors="pt")
        except Exception:
            continue
        pixels = next((v for k, v in out.items() if k.startswith("pixel_values") and torch.is_tensor(v)), None)
        return pixels.dtype if pixels is not None and pixels.is_floating_point() else None
    return None


def _check_generates(model: Any, processor: Any) -> None:
    """:class:`TinyBuildError` unless the tiny model generates on its processor's output for a chat prompt."""
    from PIL import Image

    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this ?"}]}]
    text = render_chat(processor, conversation)
    try:
        inputs = processor(images=[Image.new("RGB", (56, 40), (200, 30, 30))], text=text, return_tensors="pt")
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=1, do_sample=False)
    except Exception as err:  # the tiny pair is inconsistent: a shrinking this builder does not get right
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise TinyBuildError(
            f"the tiny model does not run on its processor's output: {type(err).__name__}: {first}"
        ) from err


_SEQUENCE_LENGTHS = ("image_seq_length", "image_seq_len", "num_image_tokens")
"""Processor settings holding the image tokens per image (or per tile) that a checkpoint records from its model."""
_SIDE_LENGTH = "patch_size"
"""Processor setting that may hold the image tokens per tile side instead (a square tile's tokens are its square)."""


def _calibrate(model: Any, processor: Any, placeholder: str) -> None:
    """Make the processor write as many image tokens per tile as the shrunk model gives features per tile.

    Families that pool or pixel-shuffle their tiles record the resulting count in the processor's config;
    the tiny model's count follows from its shrunk sizes, so the processor's is set from one probe image.
    """
    from PIL import Image

    out = None
    for batch in ([[Image.new("RGB", (56, 40))]], [Image.new("RGB", (56, 40))]):
        try:
            out = processor(text=[placeholder], images=batch, return_tensors="pt")
            break
        except ImportError as err:
            raise TinyBuildError(f"the processor needs a package not installed here: {err}") from err
        except (TypeError, ValueError):
            continue
    if out is None:
        return
    name = next((n for n in _SEQUENCE_LENGTHS if isinstance(getattr(processor, n, None), int)), None)
    side = getattr(processor, _SIDE_LENGTH, None)
    if name is None and not isinstance(side, int):
        return
    tokens = int((out["input_ids"] == getattr(model.config, "image_token_id", None)).sum())
    image_inputs = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask") and "token_type" not in k}
    try:
        with torch.no_grad():
            pooled = model.model.get_image_features(**image_inputs, return_dict=True).pooler_output
    except Exception:
        return
    features = sum(p.reshape(-1, p.shape[-1]).shape[0] for p in pooled) if isinstance(pooled, (list, tuple)) else 0
    if not features and torch.is_tensor(pooled):
        features = pooled.reshape(-1, pooled.shape[-1]).shape[0]
    if name is None:  # tokens per tile side (Cohere2-Vision): tiles of side x side tokens
        _calibrate_side(processor, tokens, features, side)
        return
    per_tile = getattr(processor, name)
    if tokens and features and tokens != features and tokens % per_tile == 0 and features % (tokens // per_tile) == 0:
        setattr(processor, name, features // (tokens // per_tile))


def _calibrate_side(processor: Any, tokens: int, features: int, side: int) -> None:
    """Set the processor's tokens per tile side where its tiles of ``side`` x ``side`` tokens do not match the
    model's features (left as it is where they match: Pixtral's ``patch_size`` is a pixel size)."""
    if not tokens or not features or tokens == features or tokens % (side * side):
        return
    tiles = tokens // (side * side)
    new_side = math.isqrt(features // tiles) if features % tiles == 0 else 0
    if new_side and new_side * new_side * tiles == features:
        setattr(processor, _SIDE_LENGTH, new_side)


def build_meta_model(model_type: str) -> Any:
    """``model_type``'s model on the meta device from its shrunk default config, without a processor (no
    weights; for asking an adapter whether it supports the family when no tiny pair can be built)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    model_class = getattr(transformers, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(model_type, ""), None)
    if model_class is None:
        raise TinyBuildError(f"transformers does not export the model class of {model_type!r}")
    default = _default_config(model_type)
    try:
        values = _shrunk(default.to_dict(), vocab=_WIDTH * 4)
        _set_everywhere(values, "pad_token_id", 0)
        config = type(default).from_dict(values)
        with torch.device("meta"):
            return model_class(config)
    except Exception as err:
        raise TinyBuildError(f"the model cannot be built from its shrunk config: {type(err).__name__}: {err}") from err


# ---------------------------------------------------------------------------------------------------- processor
def _processor(model_type: str, default: Any, layout: _Layout) -> tuple[Any, str, int]:
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    # A mixture-of-experts variant shares its dense sibling's processor (Qwen3-VL-MoE, GLM-4.5V).
    dense = model_type.removesuffix("_moe")
    processor_name = PROCESSOR_MAPPING_NAMES.get(model_type) or PROCESSOR_MAPPING_NAMES.get(dense)
    processor_class = _transformers_class(processor_name) if processor_name else None
    if processor_class is None:
        raise TinyBuildError("the family has no processor class")
    image_names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or IMAGE_PROCESSOR_MAPPING_NAMES.get(dense)
    image_names = image_names if isinstance(image_names, dict) else {}
    # The PIL image processor where the family has one, else its torchvision one on torch-only ops.
    image_name = image_names.get("pil") or image_names.get("torchvision")
    image_processor_class = _transformers_class(image_name) if image_name else None
    if image_processor_class is None:
        raise TinyBuildError("the family has no image processor that runs without torchvision")
    image_processor = _image_processor(image_processor_class, _image_side(default))
    for name, value in layout.image_processor.items():
        _set_over(image_processor, name, value)
    vision = getattr(default, "vision_config", None)
    for name, source in (
        ("patch_size", "patch_size"),
        ("merge_size", "spatial_merge_size"),
        ("merge_size", "merge_size"),
        ("temporal_patch_size", "temporal_patch_size"),
        ("temporal_patch_size", "patch_temporal"),
    ):
        value = getattr(vision, source, None)
        current = getattr(image_processor, name, None)
        if isinstance(value, int) and isinstance(current, int) and current >= _CROP_FACTOR * value:
            setattr(image_processor, name, _image_side(default))  # a crop of many patches (Step3p7's local crops)
        elif isinstance(value, int) and isinstance(current, int):
            setattr(image_processor, name, value)  # the processor's patch geometry is the tower's
        elif isinstance(value, int) and isinstance(current, dict) and set(current) == {"height", "width"}:
            setattr(image_processor, name, {"height": value, "width": value})
    if hasattr(image_processor, "image_seq_length"):
        image_processor.image_seq_length = _tokens_per_image(default)
    try:
        images_only = _images_only(processor_class)
    except ImportError as err:  # a processor class that is a placeholder for a missing package
        raise TinyBuildError(f"the processor needs a package not installed here: {err}") from err
    kwargs = _processor_kwargs(processor_class, default)
    spec = TinyLlavaSpec(extra_words=layout.words)
    tokens: dict[str, str] = {"image_token": "<image>", **layout.tokens}
    for _ in range(12):  # learn the special tokens the processor reads from its tokenizer, then rebuild
        try:
            processor = images_only(image_processor=image_processor, tokenizer=tiny_tokenizer(spec, tokens), **kwargs)
        except (AttributeError, ValueError) as err:
            missing = _MISSING_TOKEN.search(str(err))
            if missing is None or missing.group(1) in tokens:
                raise TinyBuildError(f"the processor cannot be built: AttributeError: {err}") from err
            tokens[missing.group(1)] = f"<{missing.group(1)}>"
            continue
        except Exception as err:
            raise TinyBuildError(f"the processor cannot be built: {type(err).__name__}: {err}") from err
        found = {**_special_tokens(processor), **tokens}  # the tokenizer's names stand (Gemma 3 aliases them)
        for name, text in _unknown_tokens(processor).items():  # its own text where it does not read the tokenizer's
            found.setdefault(f"processor_{name}", text)
        for name in _unset_tokens(processor):  # tokens it reads from the tokenizer and found none of
            found.setdefault(name, f"<{name}>")
        if (missing := _missing_at_call(processor)) and missing not in found:
            found[missing] = f"<{missing}>"  # a token the processor reads only when called (Gemma 4's audio token)
        for index, text in enumerate(_written_tokens(processor)):  # literals its code writes (Ovis2's <IMG_ATOM>)
            if text not in found.values():
                found[f"written_{index}_token"] = text
        if found == tokens:
            break
        tokens = found
    else:
        raise TinyBuildError("the processor's special tokens do not settle")
    text, image_id = _placeholder(processor, tokens)
    processor.chat_template = tiny_chat_template(text)
    return processor, text, image_id


def _transformers_class(name: str) -> type | None:
    """transformers' class ``name``; one whose module imports torchvision's transforms is imported on the
    torch-only ops of :mod:`psaguard.testing.torch_transforms` (None where it cannot be imported here)."""
    import transformers

    found = getattr(transformers, name, None)
    if isinstance(found, type) and not found.__qualname__.endswith("Placeholder"):
        return found
    module = getattr(transformers, "_class_to_module", {}).get(name)
    if module is None:
        return None
    try:
        return getattr(import_with_torch_transforms(f"transformers.{module}"), name, None)
    except ImportError:
        return None


def _image_side(config: Any) -> int:
    """Side in pixels of the tiny models' square image inputs: 8 x 8 of the tower's patches."""
    return _GRID * _patch_size(config)


def _patch_size(config: Any) -> int:
    patch = getattr(getattr(config, "vision_config", None), "patch_size", None) or 14
    return int(patch[0] if isinstance(patch, (list, tuple)) else patch)


def _tokens_per_image(config: Any) -> int:
    """Image tokens per image of a fixed-count family: pooled 4 x 4 where the config pools, else the 8 x 8 grid."""
    return _TOKENS_PER_IMAGE if hasattr(config, "mm_tokens_per_image") else _GRID * _GRID


def _image_processor(image_processor_class: type, base_side: int) -> Any:
    """The family's image processor, resizing to ``base_side`` px where its sizes are sides (not pixel areas)."""
    image_processor = image_processor_class()
    for name in ("size", "crop_size", "max_image_size", "min_image_size", "high_res_size"):
        side = 2 * base_side if name.startswith("high_res") else base_side  # a second, sharper view (DeepSeek-VL)
        size = getattr(image_processor, name, None)
        if isinstance(size, dict):
            setattr(image_processor, name, {k: _side_or_area(v, side) for k, v in size.items()})
        elif isinstance(size, int):  # a longest or shortest side in pixels (Aria's max_image_size)
            setattr(image_processor, name, _side_or_area(size, side))
        elif size is not None:  # transformers' SizeDict
            for key in ("height", "width", "shortest_edge", "longest_edge"):
                if (value := getattr(size, key, None)) is not None:
                    setattr(size, key, _side_or_area(value, side))
    for name, value in vars(image_processor).items():  # token budgets per image (Gemma 4's max_soft_tokens)
        if name.startswith("max_") and name.endswith("tokens") and isinstance(value, int) and value > _GRID * _GRID:
            setattr(image_processor, name, value // 4)
    if getattr(image_processor, "image_grid_pinpoints", None):
        image_processor.image_grid_pinpoints = _pinpoints(base_side)
    return image_processor


def _set_over(target: Any, name: str, value: Any) -> None:
    """Set ``value`` as ``target``'s ``name``; a mapping updates the dict or ``SizeDict`` there key by key."""
    current = getattr(target, name, None)
    if isinstance(value, Mapping) and isinstance(current, dict):
        current.update(value)
    elif isinstance(value, Mapping) and current is not None:
        for key, item in value.items():
            setattr(current, key, item)
    else:
        setattr(target, name, value)


def _side_or_area(value: Any, side: int) -> Any:
    return side if isinstance(value, int) and 0 < value < _AREA_THRESHOLD else value


def _pinpoints(side: int) -> list[list[int]]:
    return [[side, side], [2 * side, side], [side, 2 * side]]


def _images_only(processor_class: type) -> type:
    """``processor_class`` without its video, audio or other parts: images and text only (no torchvision)."""
    from transformers.processing_utils import ProcessorMixin

    kept = ("image_processor", "tokenizer")
    dropped = [a for a in processor_class.get_attributes() if a not in kept]
    required = [
        name
        for name, param in inspect.signature(processor_class.__init__).parameters.items()
        if name not in ("self", *kept)
        and param.default is inspect.Parameter.empty
        and param.kind is param.POSITIONAL_OR_KEYWORD
    ]

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, **kwargs: Any) -> None:
        processor_class.__init__(
            self, image_processor=image_processor, tokenizer=tokenizer, **dict.fromkeys(required), **kwargs
        )

    __init__.__signature__ = inspect.signature(processor_class.__init__)  # what save_pretrained serializes

    # Where the kept parts come first, the dropped ones are no attributes: they are neither saved nor loaded
    # (their loaders need torchvision), and the positional None passed for them is left out.
    attributes = processor_class.get_attributes()
    if attributes[: len(kept)] == [a for a in attributes if a in kept]:
        attributes = attributes[: len(kept)]

    settings = [n for n in inspect.signature(processor_class.__init__).parameters if n not in ("self", *kept)]

    def from_args_and_dict(cls, args: Any, processor_dict: dict[str, Any], **kwargs: Any) -> Any:
        """A saved processor's settings by the names of the class's own ``__init__`` (the wrapper's hides them)."""
        unused = kwargs.pop("return_unused_kwargs", False)
        processor = cls(*args, **{k: v for k, v in {**processor_dict, **kwargs}.items() if k in settings})
        return (processor, {}) if unused else processor

    def from_dict(cls, processor_dict: dict[str, Any], **kwargs: Any) -> Any:
        """The same by keyword, its parts included (what transformers 5.25 calls instead)."""
        unused = kwargs.pop("return_unused_kwargs", False)
        chosen = {k: v for k, v in {**processor_dict, **kwargs}.items() if k in settings or k in kept}
        processor = cls(**chosen)
        return (processor, {}) if unused else processor

    def check_argument_for_proper_class(self, attribute_name: str, arg: Any) -> Any:
        return None if arg is None else processor_class.check_argument_for_proper_class(self, attribute_name, arg)

    # With parts left out or on torch-only ops, not transformers' name (whose class AutoProcessor would load with
    # those parts, or as a placeholder needing torchvision): registered for the config class, AutoProcessor finds it.
    import transformers

    own = not dropped and getattr(transformers, processor_class.__name__, None) is processor_class
    return type(
        processor_class.__name__ if own else f"Tiny{processor_class.__name__}",
        (processor_class,),
        {
            **dict.fromkeys(dropped),
            "__init__": __init__,
            "get_attributes": classmethod(lambda cls: attributes),
            "from_args_and_dict": classmethod(from_args_and_dict),
            "from_dict": classmethod(from_dict),
            "check_argument_for_proper_class": check_argument_for_proper_class,
            **({"apply_chat_template": ProcessorMixin.apply_chat_template} if _reads(processor_class, dropped) else {}),
            "__module__": __name__,
        },
    )


def _reads(processor_class: type, dropped: list[str]) -> bool:
    """Whether the class's own chat-template rendering reads a left-out part (SmolVLM's video frame settings)."""
    own = processor_class.__dict__.get("apply_chat_template")
    return own is not None and any(f"self.{name}" in inspect.getsource(own) for name in dropped)


def _processor_kwargs(processor_class: type, config: Any) -> dict[str, Any]:
    """Settings the processor's ``__init__`` takes that a checkpoint's processor config records from its model."""
    params = inspect.signature(processor_class.__init__).parameters
    vision = getattr(config, "vision_config", None)
    known = {
        "patch_size": getattr(vision, "patch_size", None),
        "img_size": _image_side(config),
        "downsample_factor": getattr(config, "downsample_factor", None),
        "vision_feature_select_strategy": getattr(config, "vision_feature_select_strategy", "default"),
        "num_additional_image_tokens": 1 if "clip" in str(getattr(vision, "model_type", "")) else 0,
        "image_seq_length": _tokens_per_image(config),
        "num_image_tokens": _GRID * _GRID,
        "spatial_merge_size": getattr(config, "spatial_merge_size", None),
    }
    return {k: v for k, v in known.items() if k in params and v is not None}


def _unset_tokens(processor: Any) -> list[str]:
    """Names of the processor's ``*_token`` attributes left None (the tokenizer had no such token)."""
    names = [n for n in vars(processor) if n.endswith(_TOKEN_SUFFIXES) and not n.startswith("_")]
    return [n for n in names if getattr(processor, n) is None and n not in _TEXT_TOKENS]


_WRITTEN_TOKEN = re.compile(r"<\|[\w.-]+\|>|<[A-Za-z][\w.-]*>|\[[A-Z][A-Z0-9_]*\]|\]<\][\w .-]+\[>\[")
"""Special-token spellings (``<|image_pad|>``, ``<IMG_ATOM>``, ``[IMG]``, ``]<]start of image[>[``) in the text a
processor tokenizes."""


class _StopProcessing(Exception):
    """Raised by :class:`_Recorder` once the processor hands its text to the tokenizer."""


class _Recorder:
    """Stands in for a processor's tokenizer: records the text the processor tokenizes, then stops the call."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.texts: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)

    def __call__(self, text: Any = None, *args: Any, **kwargs: Any) -> Any:
        self.texts.extend([text] if isinstance(text, str) else [t for t in text or [] if isinstance(t, str)])
        raise _StopProcessing


def _written_tokens(processor: Any) -> list[str]:
    """Special-token spellings the processor writes for an image that its tokenizer does not know."""
    from PIL import Image

    text = getattr(processor, "image_token", None)
    tokenizer = processor.tokenizer
    if not isinstance(text, str):
        return []
    recorder = _Recorder(tokenizer)
    processor.tokenizer = recorder
    try:
        processor(text=[text], images=[[Image.new("RGB", (40, 56))]], return_tensors="pt")
    except Exception:  # _StopProcessing, or a processor this probe cannot call: nothing learnt
        pass
    finally:
        processor.tokenizer = tokenizer
    known = set(tokenizer.get_vocab())
    written = [t for text in recorder.texts for t in _WRITTEN_TOKEN.findall(text)]
    return [t for t in dict.fromkeys(written) if t not in known]


def _missing_at_call(processor: Any) -> str | None:
    """The name of a special token the processor asks its tokenizer for when called with an image, if missing."""
    from PIL import Image

    text = getattr(processor, "image_token", None)
    if not isinstance(text, str):
        return None
    try:
        processor(text=[text], images=[[Image.new("RGB", (40, 56))]], return_tensors="pt")
    except Exception as err:
        missing = _MISSING_TOKEN.search(str(err))
        return missing.group(1) if missing else None
    return None


def _unknown_tokens(processor: Any) -> dict[str, str]:
    """The processor's named special tokens whose text its tokenizer does not know (Pixtral's ``[IMG]``, a
    processor setting rather than the tokenizer's ``image_token``): name -> text."""
    known = set(processor.tokenizer.get_vocab())
    return {n: t for n, t in _special_tokens(processor).items() if t not in known}


def _special_tokens(processor: Any) -> dict[str, str]:
    """The processor's named special tokens (``image_token``, ``boi_token``, ...): attribute -> text. A plain word
    (Aya Vision's ``TILE_GLOBAL``) is none: the tokenizer splits it as any text."""
    found = {}
    for name, value in inspect.getmembers(processor):
        named = name.endswith(_TOKEN_SUFFIXES) and not name.startswith("_") and name not in _TEXT_TOKENS
        if named and isinstance(value, str) and value and " " not in value.strip() and not re.fullmatch(r"\w+", value):
            found[name] = value
    return found


def _placeholder(processor: Any, tokens: Mapping[str, str]) -> tuple[str, int]:
    """What the chat template writes per image, and the image token it expands into.

    Of the processor's named image tokens (alone, or between its image start and end tokens), the text whose
    expansion repeats a token most, then holds the most named tokens (Qwen2-VL's template writes the start and
    end tokens its processor does not add); that token is the image token the model's features replace.
    """
    named = {n: t for n, t in tokens.items() if n not in _TEXT_TOKENS}  # the processor's and the tokenizer's
    visual = {n: t for n, t in named.items() if re.search("image|img|vision|boi_token", n)}
    images = list(visual.values())
    starts = [t for n, t in visual.items() if "start" in n]
    ends = [t for n, t in visual.items() if "end" in n]
    texts = [*images, *(s + t + e for t in images for s in starts for e in ends if t not in (s, e))]
    marks = set(processor.tokenizer.convert_tokens_to_ids(list(named.values())))
    best, score = None, (1, 0)
    for text in dict.fromkeys(texts):
        out = _probe(processor, text)
        ids = None if out is None else out["input_ids"]
        ids = None if ids is None else ids[ids != processor.tokenizer.unk_token_id]  # unknown words: no image token
        if ids is None or not len(ids):
            continue
        values, counts = ids.unique(return_counts=True)
        found = (int(counts.max()), len(marks & set(ids.tolist())))
        if found[0] > 1 and found > score:
            best, score = (text, int(values[counts.argmax()])), found
    if best is None:
        raise TinyBuildError("no special token of the processor expands into a run of image tokens")
    return best


def _probe(processor: Any, text: str, size: tuple[int, int] = (40, 56)) -> Any:
    """The processor's output for ``text`` and one image of ``size`` (nested per prompt or flat, whichever it
    takes), or None; :class:`TinyBuildError` where it needs a package not installed here."""
    from PIL import Image

    for batch in ([[Image.new("RGB", size)]], [Image.new("RGB", size)]):
        try:
            return processor(text=[text], images=batch, return_tensors="pt")
        except ImportError as err:
            raise TinyBuildError(f"the processor needs a package not installed here: {err}") from err
        except Exception:
            continue
    return None


# ---------------------------------------------------------------------------------------------------- config
def _default_config(model_type: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.for_model(model_type)
    except Exception as err:
        raise TinyBuildError(f"the default config cannot be built: {type(err).__name__}: {err}") from err


def _config(default: Any, processor: Any, image_id: int, mrope: bool) -> Any:
    """The tiny config; ``mrope``: the model splits rotary frequencies per (t, h, w) axis (M-RoPE)."""
    tok = processor.tokenizer
    raw = default.to_dict()
    for name, sub_config in getattr(default, "sub_configs", {}).items():
        if raw.get(name) is None and isinstance(sub_config, type):  # a part the default leaves out (a tower)
            try:
                raw[name] = sub_config().to_dict()
            except Exception:
                continue
    values = _shrunk(raw, vocab=_round_up(len(tok), 64))
    vision_width = (raw.get("vision_config") or {}).get("hidden_size")
    out_width = raw.get("out_hidden_size")  # the model's own (not its tower's): merged patches' width (Muse Spark)
    if isinstance(vision_width, int) and isinstance(out_width, int) and out_width % vision_width == 0:
        values["out_hidden_size"] = _WIDTH * (out_width // vision_width)
    side = _image_side(default)
    if isinstance(vision := values.get("vision_config"), dict) and "image_size" in vision:
        vision["image_size"] = [side, side] if isinstance(vision["image_size"], (list, tuple)) else side
    if isinstance(high := values.get("high_res_vision_config"), dict) and isinstance(high.get("image_size"), int):
        high["image_size"] = 2 * side  # the sharper view's tower (its features are resized to the other's grid)
    if mrope:
        _add_mrope(values)
    if "mm_tokens_per_image" in values:
        values["mm_tokens_per_image"] = _TOKENS_PER_IMAGE
    if values.get("image_grid_pinpoints"):
        values["image_grid_pinpoints"] = _pinpoints(side)
    values.update(_token_ids(values, processor))
    for key in ("image_token_id", "image_token_index"):
        if key in values:
            values[key] = image_id
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        _set_everywhere(values, key, getattr(tok, key))
    values["tie_word_embeddings"] = False
    try:
        return type(default).from_dict(values)
    except Exception as err:
        raise TinyBuildError(f"the shrunk config is refused: {type(err).__name__}: {err}") from err


def _shrunk(values: dict[str, Any], vocab: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    old_depth = values.get("num_hidden_layers") or values.get("depth") or values.get("num_layers")
    for key, value in values.items():
        if key.endswith("patch_to_query_dict") and isinstance(value, dict):  # patches per image -> queries
            out[key] = {str(_GRID * _GRID): _TOKENS_PER_IMAGE}
        elif key.endswith("patch_to_query_dict"):
            out[key] = _TOKENS_PER_IMAGE
        elif isinstance(value, dict) and value and all(str(k).isdigit() for k in value):
            last = list(value.values())[-1]  # per-layer settings: the last layer's, shrunk
            out[key] = {str(_SHRINK["num_hidden_layers"] - 1): _shrunk(last, vocab) if isinstance(last, dict) else last}
        elif isinstance(value, dict) and ("model_type" in value or key.endswith("_config")):
            out[key] = _shrunk(value, vocab)
        elif key in _SHRINK and isinstance(value, int) and not isinstance(value, bool):
            keep_smaller = key.startswith(("num_experts_per", "topk_", "qk_rope"))  # (GLM-5's no-RoPE DSA layers: 0)
            out[key] = min(value, _SHRINK[key]) if keep_smaller else _SHRINK[key]
        elif key in _SHRINK and isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            out[key] = [_SHRINK[key]] * len(value)  # one per modality (ERNIE-4.5-VL's text and vision experts)
        elif key in ("vocab_size", "vocab_size_per_layer_input") and isinstance(value, int):
            out[key] = vocab
        elif isinstance(value, list) and old_depth and len(value) == old_depth and _layer_sources(value):
            out[key] = [0, 1 if value[-1] == old_depth - 1 else 0]  # each layer's source layer (shared KV caches)
        elif isinstance(value, list) and old_depth and len(value) == old_depth and key not in _LAYER_INDEX_LISTS:
            out[key] = [value[0], value[-1]]  # one entry per layer (layer_types): the first and the last kind
        elif key in _LAYER_INDEX_LISTS and isinstance(value, list):
            out[key] = [min(int(i), 1) if int(i) >= 0 else max(int(i), -2) for i in value][:2]
        else:
            out[key] = value
    if isinstance(ratio := out.get("pixel_shuffle_ratio"), float) and "intermediate_size" in out:
        out["intermediate_size"] = int(out["hidden_size"] / ratio**2)  # the shuffled patches' width (Llama 4)
    if "qk_head_dim" in out:  # latent attention: the no-RoPE and RoPE parts of each head
        out["qk_head_dim"] = out.get("qk_nope_head_dim", 0) + out.get("qk_rope_head_dim", 0)
    if "kv_lora_rank" in out and "num_key_value_heads" in out:  # latent attention: no grouped key/value heads
        out["num_key_value_heads"] = out.get("num_attention_heads", out["num_key_value_heads"])
    return out


def _layer_sources(values: list[Any]) -> bool:
    """Whether a per-layer list names, for each layer, itself or an earlier layer (Mistral Large 4's KV sources)."""
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    return ints and all(0 <= v <= i for i, v in enumerate(values)) and values[-1] > 1


def _token_ids(values: dict[str, Any], processor: Any) -> dict[str, Any]:
    """The config's ``*_token_id`` / ``*_token_index`` fields, from the tokens the processor names."""
    tok = processor.tokenizer
    ids = {}
    for key in values:
        for suffix in ("_token_id", "_token_index"):
            if not key.endswith(suffix):
                continue
            base = key[: -len(suffix)]
            known = getattr(tok, f"{base}_token_id", None)  # the tokenizer's own names first (Gemma 3 aliases them)
            known = known if isinstance(known, int) else getattr(processor, f"{base}_token_id", None)
            if isinstance(known, int):
                ids[key] = known
            elif isinstance(text := getattr(processor, f"{base}_token", None), str):
                ids[key] = tok.convert_tokens_to_ids(text)
    return ids


def _add_mrope(values: dict[str, Any], rotary_factor: float = 1.0) -> None:
    """M-RoPE sections summing to the shrunk rotary ``head_dim / 2`` in every sub-config's rotary parameters."""
    rotary_factor = values.get("partial_rotary_factor", rotary_factor)
    for key, value in values.items():
        if key in ("rope_parameters", "rope_scaling") and isinstance(value, dict):
            half = int(_SHRINK["head_dim"] * value.get("partial_rotary_factor", rotary_factor)) // 2
            side = 3 * half // 8
            default = value.get("mrope_section")
            if not isinstance(default, list) or default[0] == default[1] != default[2]:
                # (h, w, t) with h == w as ERNIE-4.5-VL orders them (its default is in the code, not the config)
                value["mrope_section"] = [side, side, half - 2 * side]
            else:
                value["mrope_section"] = [half - 2 * side, side, side]  # (t, h, w)
        elif isinstance(value, dict):
            _add_mrope(value, rotary_factor)


def _set_everywhere(values: dict[str, Any], key: str, value: Any) -> None:
    if key in values:
        values[key] = value
    for sub in values.values():
        if isinstance(sub, dict) and ("model_type" in sub):
            _set_everywhere(sub, key, value)


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple
