"""Build a classifier-only model from a saved checkpoint, reading only the tensors it needs.

A family with a classifier-only adapter (:class:`EncoderOnlyBackbone`) gets an :class:`EncoderOnlyModel`;
every other model the generic adapter handles gets its own model class with only the vision tower,
projector and input embeddings loaded (:mod:`psaguard.backbones.generic_classifier_only`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from psaguard.backbones.base import Backbone
from psaguard.backbones.encoder_only import EncoderOnlyBackbone, EncoderOnlyModel, encoder_only_backbones
from psaguard.backbones.generic_classifier_only import load_generic_classifier_only
from psaguard.backbones.registry import resolve_backbone
from psaguard.checkpoints.reader import MODEL_CONFIG_NAME, CheckpointReader
from psaguard.config import ModelFingerprint
from psaguard.dtypes import DtypeRequest, resolve_dtype
from psaguard.errors import CheckpointError, UnsupportedModelError

__all__ = ["load_encoder_only", "load_model_config"]

logger = logging.getLogger(__name__)

# Where a checkpoint keeps the two parts is the classifier-only adapter's (EncoderOnlyBackbone's
# tower_checkpoint_prefixes and embedding_checkpoint_keys); older hub checkpoints also nest the CLIP tower's
# weights under `vision_model.`, which transformers 5's CLIPVisionModel no longer has.
_TOWER_NESTING = "vision_model."
# With tie_word_embeddings, save_pretrained may keep only the output head of the tied pair.
_TIED_KEYS = ("lm_head.weight", "language_model.lm_head.weight")


def load_encoder_only(
    path: str | Path,
    *,
    revision: str | None = None,
    dtype: DtypeRequest = None,
    device: str | torch.device | None = None,
    fingerprint: ModelFingerprint | None = None,
) -> nn.Module:
    """The parts of the checkpoint at ``path`` the guard's verdicts read; no other tensor is read.

    For a family with a classifier-only adapter, an :class:`EncoderOnlyModel` (vision tower and input
    embeddings); for any other model the generic adapter handles, the model's own class holding only its
    vision tower, multimodal projector and input embeddings
    (:func:`~psaguard.backbones.generic_classifier_only.load_generic_classifier_only`).

    Args:
        path: a directory written by ``save_pretrained`` (safetensors, one file or sharded with an index),
            or a hub repo id; a hub checkpoint fetches only its config, index and the shards holding these
            tensors.
        revision: hub revision (branch, tag or commit) of a repo id.
        dtype: dtype of the loaded parts (a torch dtype or its name); None or ``"auto"`` chooses what ``device``
            runs fast (:func:`psaguard.dtypes.choose_dtype`: on a CPU without a native 16-bit path, float32).
        device: where to put them (default: the CPU).
        fingerprint: if given, checked against the checkpoint's config before any tensor is read, so a guard
            made for another model fails without fetching shards.

    Raises:
        UnsupportedModelError: the config is of a family that neither has a classifier-only adapter nor follows
            the interface of the generic adapter.
        CheckpointMismatchError: ``fingerprint`` differs from the checkpoint's.
        CheckpointError: config or weights are missing, unreadable, or of the wrong shapes.
    """
    reader = CheckpointReader.open(path, revision)
    config = load_model_config(reader.directory)
    if not _has_adapter(config):
        return load_generic_classifier_only(reader, config, dtype=dtype, device=device, fingerprint=fingerprint)
    meta_tower = _meta_tower(config)
    if fingerprint is not None:
        fingerprint.check(_meta_model(config, meta_tower).fingerprint())
    adapter = _adapter_for(config)
    tower_keys = _tower_keys(reader, meta_tower, adapter.tower_checkpoint_prefixes)
    embedding_key = _embedding_key(reader, config, adapter.embedding_checkpoint_keys)
    tensors = reader.read([*tower_keys.values(), embedding_key])
    weight = tensors.pop(embedding_key)
    text = config.text_config
    if tuple(weight.shape) != (text.vocab_size, text.hidden_size):
        raise CheckpointError(
            f"input embeddings {embedding_key} of {reader.directory} are {tuple(weight.shape)}, but the config "
            f"says ({text.vocab_size}, {text.hidden_size})"
        )
    choice = resolve_dtype(dtype, device or "cpu", weight.dtype)
    logger.info("classifier-only parts compute in %s (%s)", choice.dtype, choice.reason)
    dtype = choice.torch_dtype
    tower = _build_tower(meta_tower, config, {name: tensors[key] for name, key in tower_keys.items()}, dtype)
    embed_tokens = nn.Embedding.from_pretrained(weight.to(dtype), freeze=True)
    model = EncoderOnlyModel(config, tower, embed_tokens).eval().requires_grad_(False)
    logger.info("loaded %s parameters (vision tower + token embeddings) of %s", f"{_count(model):,}", reader.directory)
    return model.to(device) if device is not None else model


def load_model_config(directory: Path) -> Any:
    """The checkpoint's transformers config, if it is of a vision-language model (one with a vision config)."""
    from transformers import AutoConfig

    if not (directory / MODEL_CONFIG_NAME).is_file():
        raise CheckpointError(f"no {MODEL_CONFIG_NAME} in {directory}")
    try:
        config = AutoConfig.from_pretrained(directory)
    except ValueError as err:  # transformers raises ValueError for an unknown or missing model_type
        raise UnsupportedModelError(f"{directory / MODEL_CONFIG_NAME} is not a supported model config: {err}") from err
    except OSError as err:
        raise CheckpointError(f"cannot read {directory / MODEL_CONFIG_NAME}: {err}") from err
    if getattr(config, "vision_config", None) is None:
        raise UnsupportedModelError(
            f"{directory} holds a {config.model_type!r} model, which has no vision config: classifier-only mode "
            "supports vision-language models"
        )
    return config


def _has_adapter(config: Any) -> bool:
    return any(config.model_type in adapter.model_types for adapter in encoder_only_backbones())


def _adapter_for(config: Any) -> type[EncoderOnlyBackbone]:
    """The classifier-only adapter of the checkpoint's family (load_encoder_only checked there is one)."""
    return next(a for a in encoder_only_backbones() if config.model_type in a.model_types)


def _tower_keys(reader: CheckpointReader, meta_tower: nn.Module, prefixes: tuple[str, ...]) -> dict[str, str]:
    """Vision-tower parameter and buffer name -> checkpoint key, for every tensor the tower saves."""
    expected = meta_tower.state_dict()
    mapping, missing = {}, []
    for name in expected:
        bare = name.removeprefix(_TOWER_NESTING)
        found = [
            key
            for prefix in prefixes
            for key in (prefix + bare, prefix + _TOWER_NESTING + bare)
            if key in reader.weight_map
        ]
        if len(found) > 1:  # two copies of one weight: which the model would use is unclear, so refuse
            raise CheckpointError(f"checkpoint {reader.directory} holds vision tower weight {name!r} twice: {found}")
        if found:
            mapping[name] = found[0]
        else:
            missing.append(name)
    if missing:
        raise CheckpointError(
            f"checkpoint {reader.directory} lacks {len(missing)} vision tower tensors, e.g. {missing[:3]} "
            f"(looked under {list(prefixes)})"
        )
    return mapping


def _embedding_key(reader: CheckpointReader, config: Any, keys: tuple[str, ...]) -> str:
    found = [key for key in keys if key in reader.weight_map]
    tied = bool(getattr(config.text_config, "tie_word_embeddings", False) or config.tie_word_embeddings)
    if not found and tied:
        found = [key for key in _TIED_KEYS if key in reader.weight_map][:1]
    if len(found) > 1:
        raise CheckpointError(f"checkpoint {reader.directory} holds the input embeddings twice: {found}")
    if not found:
        raise CheckpointError(f"checkpoint {reader.directory} has no input embeddings (looked for {list(keys)})")
    return found[0]


def _build_tower(
    meta_tower: nn.Module, config: Any, state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype
) -> nn.Module:
    """The tower as the full model builds it (``AutoModel.from_config``), with exactly ``state_dict`` loaded."""
    expected = {name: tuple(t.shape) for name, t in meta_tower.state_dict().items()}
    wrong = [f"{n}: {tuple(t.shape)} != {expected[n]}" for n, t in state_dict.items() if tuple(t.shape) != expected[n]]
    if wrong:
        raise CheckpointError(f"vision tower weights do not match config.vision_config: {wrong[:3]}")
    # from_pretrained(None, config=..., state_dict=...) builds on the meta device and fills non-persistent
    # buffers (CLIP's position_ids) as a normal load does, without a random init of every weight first.
    tower, info = type(meta_tower).from_pretrained(
        None, config=config.vision_config, state_dict=dict(state_dict), dtype=dtype, output_loading_info=True
    )
    problems = {k: sorted(v) for k, v in info.items() if k != "error_msgs" and v}
    if problems or info.get("error_msgs"):
        raise CheckpointError(f"vision tower did not load cleanly: {problems or info['error_msgs']}")
    return tower


def _meta_tower(config: Any) -> nn.Module:
    """The vision tower on the meta device: its class, parameter names and shapes, no memory."""
    with torch.device("meta"):
        return _adapter_for(config).tower_from_config(config.vision_config)


def _meta_model(config: Any, meta_tower: nn.Module) -> Backbone:
    """The adapter of a weightless stand-in for the model: everything :meth:`Backbone.fingerprint` reads."""
    text = config.text_config
    embed_tokens = nn.Embedding(text.vocab_size, text.hidden_size, device="meta")
    return resolve_backbone(EncoderOnlyModel(config, meta_tower, embed_tokens), encoder_only_backbones())


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
