"""A family's default config shrunk to a tiny model's: every sub-config at a few layers and narrow widths.

Table-driven: :data:`SHRINK` sets sizes wherever they appear; per-layer lists and dicts keep one entry of the
first and the last kind; related sizes (latent attention's head parts, Llama 4's pixel-shuffle width) follow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psaguard.errors import PsaGuardError

__all__ = [
    "GRID",
    "SHRINK",
    "TOKENS_PER_IMAGE",
    "TinyBuildError",
    "default_config",
    "image_side",
    "meta_config",
    "shrunk",
    "shrunk_image_processor",
    "tiny_config",
    "tokens_per_image",
    "updated",
]

_WIDTH = 64
"""Width of every tower and language model (a multiple of 64, as the other tiny models)."""
GRID = 8
"""Patches per side of a tiny model's image (its tower's patch size is kept: processors derive from it)."""
TOKENS_PER_IMAGE = 16
"""Tokens per image where the config fixes the count (pooling the 8 x 8 grid to 4 x 4)."""

SHRINK: dict[str, int] = {
    **dict.fromkeys(("hidden_size", "embed_dim", "d_model", "out_hidden_size", "projection_dim"), _WIDTH),
    **dict.fromkeys(("projection_hidden_size", "projector_hidden_size", "output_proj_dims"), _WIDTH),
    **dict.fromkeys(("projector_input_dim", "projector_output_dim", "vision_output_dim"), _WIDTH),
    "mm_embed_dim": _WIDTH,  # an encoder-free patch embedder (Gemma 4 Unified)
    "moe_intermediate_size": _WIDTH,
    "shared_expert_intermediate_size": _WIDTH,
    "mm_posemb_size": 4 * _WIDTH,
    "merged_hidden_size": 4 * _WIDTH,  # a 2 x 2 merge of the tower's patches (MiniMax-M3-VL)
    **dict.fromkeys(("intermediate_size", "intermediate_size_mlp", "projection_intermediate_size"), 2 * _WIDTH),
    "mlp_dim": 2 * _WIDTH,
    "linear_num_heads": 4,  # linear-attention layers (GLM-5-Next)
    "linear_head_dim": _WIDTH // 4,
    "index_n_heads": 4,  # the sparse-attention indexer
    "index_head_dim": _WIDTH // 4,
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
    **dict.fromkeys(("num_hidden_layers", "depth", "num_layers"), 2),
    **dict.fromkeys(("num_experts", "n_routed_experts", "num_local_experts"), 4),
    "num_experts_per_tok": 2,
    "first_k_dense_replace": 1,
    "n_group": 2,  # expert groups (DeepSeek-V3 routing): 2 of 2 experts each
    "topk_group": 1,
}
"""Config fields set to these values wherever they appear (the model's config and every sub-config)."""

_KEEP_SMALLER = ("num_experts_per", "topk_", "qk_rope")
"""Prefixes of :data:`SHRINK` fields left as they are where already smaller (GLM-5's no-RoPE DSA layers: 0)."""
_LAYER_INDEX_LISTS = (
    "deepstack_visual_indexes",
    "vision_feature_layer",
    "fullatt_block_indexes",
    "global_attn_indexes",
)
"""Config fields that list layer indices; they are kept within the shrunk depth."""
_UNCHANGED = object()
_AREA_THRESHOLD = 10_000
"""Image-processor sizes at or above this are pixel areas (Qwen-VL's min / max pixels), left as they are."""
_CROP_FACTOR = 8
"""An image processor's ``patch_size`` this many tower patches wide or more is a crop size, not a patch."""
_SIZE_NAMES = ("size", "crop_size", "max_image_size", "min_image_size", "high_res_size")
_SIZE_KEYS = ("height", "width", "shortest_edge", "longest_edge")
_GEOMETRY = (
    ("patch_size", "patch_size"),
    ("merge_size", "spatial_merge_size"),
    ("merge_size", "merge_size"),
    ("temporal_patch_size", "temporal_patch_size"),
    ("temporal_patch_size", "patch_temporal"),
)
"""(image-processor setting, vision-config field): the processor's patch geometry is the tower's."""


class TinyBuildError(PsaGuardError):
    """A family's tiny model or processor cannot be built here (the message says why)."""


def default_config(model_type: str) -> Any:
    """``model_type``'s default config; :class:`TinyBuildError` where transformers cannot build it."""
    from transformers import AutoConfig

    try:
        return AutoConfig.for_model(model_type)
    except Exception as err:
        raise TinyBuildError(f"the default config cannot be built: {type(err).__name__}: {err}") from err


def updated(values: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with ``overrides`` set over them; a dict override updates the sub-config dict it names, or
    replaces it by its own model type's defaults first where it names another (LLaVA with a Pixtral tower)."""
    out = dict(values)
    for key, value in overrides.items():
        sub = out.get(key)
        if not (isinstance(value, Mapping) and isinstance(sub, dict)):
            out[key] = value
            continue
        if value.get("model_type", sub.get("model_type")) != sub.get("model_type"):
            sub = default_config(value["model_type"]).to_dict()
        out[key] = updated(sub, value)
    return out


def image_side(config: Any) -> int:
    """Side in pixels of the tiny models' square image inputs: 8 x 8 of the tower's patches."""
    patch = getattr(getattr(config, "vision_config", None), "patch_size", None) or 14
    return GRID * int(patch[0] if isinstance(patch, (list, tuple)) else patch)


def shrunk(values: dict[str, Any], vocab: int) -> dict[str, Any]:
    """``values`` (a config dict) with every size of :data:`SHRINK`, every sub-config and per-layer entry shrunk."""
    depth = values.get("num_hidden_layers") or values.get("depth") or values.get("num_layers")
    out = {}
    for key, value in values.items():
        new = _UNCHANGED
        for rule in _RULES:
            if (new := rule(key, value, vocab, depth)) is not _UNCHANGED:
                break
        out[key] = value if new is _UNCHANGED else new
    _fit_related(out)
    return out


def _queries(key: str, value: Any, vocab: int, depth: Any) -> Any:
    """Patches per image -> queries of a resampler (Phi-4's): the 8 x 8 grid to 16 queries."""
    if not key.endswith("patch_to_query_dict"):
        return _UNCHANGED
    return {str(GRID * GRID): TOKENS_PER_IMAGE} if isinstance(value, dict) else TOKENS_PER_IMAGE


def _sub_dict(key: str, value: Any, vocab: int, depth: Any) -> Any:
    """A sub-config, shrunk; per-layer settings (``{"0": ..., "1": ...}``): the last layer's, shrunk."""
    if not isinstance(value, dict) or not value:
        return _UNCHANGED
    if all(str(k).isdigit() for k in value):
        last = list(value.values())[-1]
        return {str(SHRINK["num_hidden_layers"] - 1): shrunk(last, vocab) if isinstance(last, dict) else last}
    return shrunk(value, vocab) if "model_type" in value or key.endswith("_config") else _UNCHANGED


def _vocab(key: str, value: Any, vocab: int, depth: Any) -> Any:
    return vocab if key in ("vocab_size", "vocab_size_per_layer_input") and isinstance(value, int) else _UNCHANGED


def _size(key: str, value: Any, vocab: int, depth: Any) -> Any:
    """A :data:`SHRINK` size; a list of them (one per modality: ERNIE-4.5-VL's text and vision experts)."""
    if key not in SHRINK:
        return _UNCHANGED
    if _is_int(value):
        return min(value, SHRINK[key]) if key.startswith(_KEEP_SMALLER) else SHRINK[key]
    return [SHRINK[key]] * len(value) if _ints(value) else _UNCHANGED


def _kv_sources(key: str, value: Any, vocab: int, depth: Any) -> Any:
    """Each layer's source layer (Mistral Large 4's shared KV caches): the first, and the second where it is its own."""
    if not (_ints(value) and len(value) == depth and all(0 <= v <= i for i, v in enumerate(value)) and value[-1] > 1):
        return _UNCHANGED
    return [0, 1 if value[-1] == depth - 1 else 0]


def _layer_indices(key: str, value: Any, vocab: int, depth: Any) -> Any:
    """A list of layer indices, kept within the two layers."""
    if key not in _LAYER_INDEX_LISTS or not isinstance(value, list):
        return _UNCHANGED
    return [min(int(i), 1) if int(i) >= 0 else max(int(i), -2) for i in value][:2]


def _per_layer(key: str, value: Any, vocab: int, depth: Any) -> Any:
    """One entry per layer (``layer_types``): the first and the last kind."""
    return [value[0], value[-1]] if isinstance(value, list) and depth and len(value) == depth else _UNCHANGED


_RULES = (_queries, _sub_dict, _size, _vocab, _kv_sources, _layer_indices, _per_layer)
"""How a config field is shrunk: the first rule that applies."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ints(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_int(v) for v in value)


def _fit_related(out: dict[str, Any]) -> None:
    """Sizes that follow others: Llama 4's pixel-shuffled width, latent attention's head parts and KV heads."""
    if isinstance(ratio := out.get("pixel_shuffle_ratio"), float) and "intermediate_size" in out:
        out["intermediate_size"] = int(out["hidden_size"] / ratio**2)
    if "qk_head_dim" in out:  # the no-RoPE and RoPE parts of each head
        out["qk_head_dim"] = out.get("qk_nope_head_dim", 0) + out.get("qk_rope_head_dim", 0)
    if "kv_lora_rank" in out and "num_key_value_heads" in out:  # no grouped key/value heads
        out["num_key_value_heads"] = out.get("num_attention_heads", out["num_key_value_heads"])


def tokens_per_image(config: Any) -> int:
    """Image tokens per image of a fixed-count family: pooled 4 x 4 where the config pools, else the 8 x 8 grid."""
    return TOKENS_PER_IMAGE if hasattr(config, "mm_tokens_per_image") else GRID * GRID


def _pinpoints(side: int) -> list[list[int]]:
    """Any-resolution tile layouts (LLaVA-NeXT's): square, tall and wide."""
    return [[side, side], [2 * side, side], [side, 2 * side]]


def tiny_config(default: Any, processor: Any, image_id: int, mrope: bool) -> Any:
    """The tiny config for ``processor``'s tokenizer; ``mrope``: rotary frequencies split per (t, h, w) axis."""
    raw = _with_default_parts(default)
    values = shrunk(raw, vocab=_round_up(len(processor.tokenizer), 64))
    vision_width = (raw.get("vision_config") or {}).get("hidden_size")
    out_width = raw.get("out_hidden_size")  # the model's own (not its tower's): merged patches' width (Muse Spark)
    if isinstance(vision_width, int) and isinstance(out_width, int) and out_width % vision_width == 0:
        values["out_hidden_size"] = _WIDTH * (out_width // vision_width)
    _fit_images(values, image_side(default))
    if mrope:
        _add_mrope(values)
    _set_token_ids(values, processor, image_id)
    values["tie_word_embeddings"] = False
    try:
        return type(default).from_dict(values)
    except Exception as err:
        raise TinyBuildError(f"the shrunk config is refused: {type(err).__name__}: {err}") from err


def _with_default_parts(default: Any) -> dict[str, Any]:
    """``default`` as a dict, with the parts its defaults leave out (a tower) at their own defaults."""
    raw = default.to_dict()
    for name, sub_config in getattr(default, "sub_configs", {}).items():
        if raw.get(name) is None and isinstance(sub_config, type):
            try:
                raw[name] = sub_config().to_dict()
            except Exception:
                continue
    return raw


def _fit_images(values: dict[str, Any], side: int) -> None:
    """Image sizes of the towers, pooled tokens per image and tile layouts, for ``side`` px images."""
    if isinstance(vision := values.get("vision_config"), dict) and "image_size" in vision:
        vision["image_size"] = [side, side] if isinstance(vision["image_size"], (list, tuple)) else side
    if isinstance(high := values.get("high_res_vision_config"), dict) and isinstance(high.get("image_size"), int):
        high["image_size"] = 2 * side  # the sharper view's tower (its features are resized to the other's grid)
    if "mm_tokens_per_image" in values:
        values["mm_tokens_per_image"] = TOKENS_PER_IMAGE
    if values.get("image_grid_pinpoints"):
        values["image_grid_pinpoints"] = _pinpoints(side)


def _set_token_ids(values: dict[str, Any], processor: Any, image_id: int) -> None:
    """The config's ``*_token_id`` / ``*_token_index`` fields from the tokens the processor names; the image
    token's from the placeholder; pad / BOS / EOS everywhere from the tokenizer."""
    tok = processor.tokenizer
    for key in [k for k in values if k.endswith(("_token_id", "_token_index"))]:
        base = key.removesuffix("_id").removesuffix("_index").removesuffix("_token")
        known = getattr(tok, f"{base}_token_id", None)  # the tokenizer's own names first (Gemma 3 aliases them)
        known = known if isinstance(known, int) else getattr(processor, f"{base}_token_id", None)
        if isinstance(known, int):
            values[key] = known
        elif isinstance(text := getattr(processor, f"{base}_token", None), str):
            values[key] = tok.convert_tokens_to_ids(text)
    for key in ("image_token_id", "image_token_index"):
        if key in values:
            values[key] = image_id
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        _set_everywhere(values, key, getattr(tok, key))


def _add_mrope(values: dict[str, Any], rotary_factor: float = 1.0) -> None:
    """M-RoPE sections summing to the shrunk rotary ``head_dim / 2`` in every sub-config's rotary parameters."""
    rotary_factor = values.get("partial_rotary_factor", rotary_factor)
    for key, value in values.items():
        if key in ("rope_parameters", "rope_scaling") and isinstance(value, dict):
            half = int(SHRINK["head_dim"] * value.get("partial_rotary_factor", rotary_factor)) // 2
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


def meta_config(default: Any) -> Any:
    """``default`` shrunk, for a model on the meta device (no tokenizer: a 256-word vocabulary, padding id 0)."""
    values = shrunk(default.to_dict(), vocab=4 * _WIDTH)
    _set_everywhere(values, "pad_token_id", 0)
    return type(default).from_dict(values)


def shrunk_image_processor(image_processor_class: type, config: Any, settings: Mapping[str, Any]) -> Any:
    """The family's image processor at the tiny sizes, with ``settings`` and the tower's patch geometry."""
    image_processor = image_processor_class()
    side = image_side(config)
    for name in _SIZE_NAMES:  # a second, sharper view (DeepSeek-VL) at twice the side
        _set_over(image_processor, name, _shrunk_size(getattr(image_processor, name, None), side, name))
    for name, value in vars(image_processor).items():  # token budgets per image (Gemma 4's max_soft_tokens)
        if name.startswith("max_") and name.endswith("tokens") and isinstance(value, int) and value > GRID * GRID:
            setattr(image_processor, name, value // 4)
    if getattr(image_processor, "image_grid_pinpoints", None):
        image_processor.image_grid_pinpoints = _pinpoints(side)
    for name, value in settings.items():
        _set_over(image_processor, name, value)
    _fit_geometry(image_processor, config, side)
    return image_processor


def _fit_geometry(image_processor: Any, config: Any, side: int) -> None:
    """The image processor's patch geometry and image tokens per image, from the config's."""
    vision = getattr(config, "vision_config", None)
    for name, source in _GEOMETRY:
        if (value := _geometry(getattr(image_processor, name, None), getattr(vision, source, None), side)) is not None:
            setattr(image_processor, name, value)
    if hasattr(image_processor, "image_seq_length"):
        image_processor.image_seq_length = tokens_per_image(config)


def _shrunk_size(size: Any, side: int, name: str) -> Any:
    """A size setting with its sides (not its pixel areas) at ``side`` px: a dict, an int or a ``SizeDict``."""
    side = 2 * side if name.startswith("high_res") else side
    if size is None or isinstance(size, (dict, int)):
        return _side_or_area(size, side)
    return {key: _side_or_area(value, side) for key in _SIZE_KEYS if (value := getattr(size, key, None)) is not None}


def _side_or_area(value: Any, side: int) -> Any:
    if isinstance(value, dict):
        return {k: _side_or_area(v, side) for k, v in value.items()}
    return side if isinstance(value, int) and 0 < value < _AREA_THRESHOLD else value


def _geometry(current: Any, value: Any, side: int) -> Any:
    """The image processor's setting for the tower's ``value`` (None: left as it is)."""
    if not isinstance(value, int):
        return None
    if isinstance(current, int):
        return side if current >= _CROP_FACTOR * value else value  # a crop of many patches (Step3p7's local crops)
    is_square = isinstance(current, dict) and set(current) == {"height", "width"}
    return {"height": value, "width": value} if is_square else None


def _set_over(target: Any, name: str, value: Any) -> None:
    """Set ``value`` as ``target``'s ``name``; a mapping updates the dict or ``SizeDict`` there key by key."""
    current = getattr(target, name, None)
    if value is None:
        return
    if isinstance(value, Mapping) and isinstance(current, dict):
        current.update(value)
    elif isinstance(value, Mapping) and current is not None and not isinstance(current, int):
        for key, item in value.items():
            setattr(current, key, item)
    else:
        setattr(target, name, value)
