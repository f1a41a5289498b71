"""The one reader of classifier-only models, for every family (with a classifier-only adapter or the generic one).

The model's own class is built on the meta device from the checkpoint's config, pruned to what the verdicts
read (:mod:`psaguard.backbones.encoder_only`), and exactly the tensors left are read from the (sharded)
safetensors checkpoint, found by the model's own names (keys renamed as transformers renames them on load).
"""

from __future__ import annotations

import logging
from functools import partial
from importlib import import_module
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers import AutoConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from psaguard.backbones.encoder_only import LanguageModelRemoved, PartRemoved, refuse_generation
from psaguard.backbones.generic import GenericBackbone
from psaguard.backbones.registry import resolve_backbone
from psaguard.checkpoints.reader import MODEL_CONFIG_NAME, CheckpointReader
from psaguard.config import ModelFingerprint
from psaguard.dtypes import DtypeRequest, resolve_dtype
from psaguard.errors import CheckpointError, UnsupportedModelError

__all__ = ["OTHER_MODALITIES", "classifier_only_skeleton", "load_encoder_only", "load_model_config"]

logger = logging.getLogger(__name__)

OTHER_MODALITIES: tuple[str, ...] = ("audio", "speech", "sound")
"""Parts of the multimodal model whose name holds one of these are not read (images do not pass through them)."""


def load_encoder_only(
    path: str | Path,
    *,
    revision: str | None = None,
    dtype: DtypeRequest = None,
    device: str | torch.device | None = None,
    fingerprint: ModelFingerprint | None = None,
) -> nn.Module:
    """The classifier-only model of the checkpoint at ``path``: vision tower, projector and input embeddings.

    Args:
        path: a directory written by ``save_pretrained`` (safetensors, one file or sharded with an index),
            or a hub repo id; a hub checkpoint fetches only its config, index and the shards holding these
            tensors.
        revision: hub revision (branch, tag or commit) of a repo id.
        dtype: dtype of the loaded parts (a torch dtype or its name); None or ``"auto"`` chooses what ``device``
            runs fast (:func:`psaguard.dtypes.choose_dtype`: on a CPU without a native 16-bit path, float32).
        device: where to put them (default: the CPU).
        fingerprint: if given, checked against the weightless model before any tensor is read, so a guard made
            for another model fails without fetching shards (the generic adapter's vision width, measured on
            the processor's probe image, is checked when the guard attaches).

    Raises:
        UnsupportedModelError: no registered adapter handles the config's model (the reason is named).
        CheckpointMismatchError: ``fingerprint`` differs from the checkpoint's.
        CheckpointError: config or weights are missing, unreadable, held twice, or of the wrong shapes.
    """
    reader = CheckpointReader.open(path, revision)
    model = classifier_only_skeleton(load_model_config(reader.directory), fingerprint)
    expected = model.state_dict()  # what is left: exactly the tensors the verdicts read
    keys = _checkpoint_keys(reader, model, expected)
    tensors = reader.read(keys.values())
    embedding = next(name for name, p in model.named_parameters() if p is model.get_input_embeddings().weight)
    choice = resolve_dtype(dtype, device or "cpu", tensors[keys[embedding]].dtype)
    logger.info("classifier-only parts compute in %s (%s)", choice.dtype, choice.reason)
    _materialise(model, {name: tensors[key] for name, key in keys.items()}, expected, choice.torch_dtype)
    count = sum(p.numel() for p in model.requires_grad_(False).parameters())
    logger.info("loaded %s parameters (%d tensors) of %s classifier-only", f"{count:,}", len(keys), reader.directory)
    return model.to(device) if device is not None else model


def load_model_config(directory: Path) -> Any:
    """The checkpoint's transformers config, if it is of a vision-language model (one with a vision config)."""
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


def classifier_only_skeleton(config: Any, fingerprint: ModelFingerprint | None = None) -> nn.Module:
    """The classifier-only model of ``config`` on the meta device (names and shapes, no memory).

    Raises :class:`UnsupportedModelError` (with the reason) when no registered adapter handles the model, and
    :class:`~psaguard.errors.CheckpointMismatchError` when ``fingerprint`` differs.
    """
    model_class = getattr(transformers, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(config.model_type, ""), None)
    if model_class is None:
        raise UnsupportedModelError(f"transformers has no image-text-to-text model for {config.model_type!r}")
    with torch.device("meta"):
        model = model_class(config).eval()
    backbone = resolve_backbone(model)  # the full model's adapter: it fingerprints as the classifier-only one
    if fingerprint is not None:
        # The generic adapter measures the vision width on the processor's probe image when the guard attaches.
        measured = type(backbone).vision_hidden_size is GenericBackbone.vision_hidden_size
        (fingerprint.model_copy(update={"vision_hidden_size": None}) if measured else fingerprint).check(
            backbone.fingerprint()
        )
    _prune(model)
    return model


def _prune(model: nn.Module) -> None:
    """Replace the language model by its input embeddings alone (at their own path) and every other part the
    vision pass does not read by :class:`PartRemoved`; the model's forward and generate then refuse."""
    embedding = model.get_input_embeddings()
    parts = getattr(model, "model", model)
    lm_name = next((n for n, child in parts.named_children() if any(m is embedding for m in child.modules())), None)
    if lm_name is None:
        raise UnsupportedModelError(
            f"no part of a {model.config.model_type!r} model holds its input embeddings, so its language model "
            "cannot be told apart and it cannot be loaded classifier-only"
        )
    path = next(name for name, module in parts.get_submodule(lm_name).named_modules() if module is embedding)
    setattr(parts, lm_name, LanguageModelRemoved(model.config, path, embedding))
    for owner, name in _unread_parts(model, parts):
        setattr(owner, name, PartRemoved(model.config))
    for module in {model, parts}:  # the model's own forward and generate refuse before touching a removed part
        module.register_forward_pre_hook(partial(refuse_generation, model.config))
    model.generate = partial(refuse_generation, model.config)
    if model.get_input_embeddings() is not embedding:
        raise UnsupportedModelError(
            f"a {model.config.model_type!r} model does not reach its input embeddings through its language model's "
            "get_input_embeddings, so it cannot be loaded classifier-only"
        )


def _unread_parts(model: nn.Module, parts: nn.Module) -> list[tuple[nn.Module, str]]:
    """(owner, name) of the other modalities' towers and of what lies outside the multimodal model (LM head)."""
    unread = [(parts, name) for name, _ in parts.named_children() if any(w in name.lower() for w in OTHER_MODALITIES)]
    outside = [] if parts is model else [(model, n) for n, child in model.named_children() if child is not parts]
    return unread + outside


def _checkpoint_keys(reader: CheckpointReader, model: nn.Module, expected: dict[str, torch.Tensor]) -> dict[str, str]:
    """Model tensor name -> checkpoint key for every tensor of ``expected``; a tensor the checkpoint lacks, holds
    twice or needs converting is refused. With tied embeddings, the output head's copy stands in for a missing
    input-embedding table (``save_pretrained`` may keep only one of the pair)."""
    tied = {t: s for t, s in getattr(model, "all_tied_weights_keys", {}).items() if s in expected}
    found, converted = _renamed_keys(reader, model, expected.keys() | tied.keys())
    for target, source in tied.items():  # the tied copy stands in for a missing source, and is not read otherwise
        keys = found.pop(target, None)
        if keys and source not in found:
            found[source] = keys
    if problem := _key_problem(found, converted, sorted(expected.keys() - found.keys())):
        raise CheckpointError(f"checkpoint {reader.directory} {problem}")
    return {name: keys[0] for name, keys in found.items()}


def _key_problem(found: dict[str, list[str]], converted: list[str], missing: list[str]) -> str | None:
    """What is wrong with the checkpoint keys found for the model's tensors (None: nothing)."""
    twice = {name: keys for name, keys in found.items() if len(keys) > 1}
    problems = [
        (converted, f"needs converting ({converted[:3]})"),
        (twice, f"holds weights twice ({dict(list(twice.items())[:3])})"),
        (missing, f"lacks {len(missing)} of the tensors the guard reads, e.g. {missing[:3]}"),
    ]
    return next((text for problem, text in problems if problem), None)


def _renamed_keys(
    reader: CheckpointReader, model: nn.Module, wanted: set[str]
) -> tuple[dict[str, list[str]], list[str]]:
    """Model tensor name -> the checkpoint keys transformers would load into it, for the names in ``wanted``; and
    the keys among them that a weight converter (not a plain renaming) would produce."""
    # transformers' loading API is imported here, on use: importing it loads transformers' modeling stack (and
    # accelerate), whose import-time warning filters `import psaguard` must not add (tests/test_packaging.py).
    loading = import_module("transformers.core_model_loading")
    transforms = import_module("transformers.conversion_mapping").get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, loading.WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, loading.WeightConverter)]
    meta = dict.fromkeys(wanted)
    found: dict[str, list[str]] = {}
    converted: list[str] = []
    for key in reader.weight_map:
        name, pattern = loading.rename_source_key(key, renamings, converters, model.base_model_prefix, meta)
        if name not in wanted and key in wanted:
            name, pattern = key, None
        if name in wanted:
            found.setdefault(name, []).append(key)
            converted += [key] if pattern is not None else []
    return found, converted


def _materialise(
    model: nn.Module, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], dtype: torch.dtype
) -> None:
    """Put ``tensors`` into the meta model, then give the non-persistent buffers of kept modules their values
    as transformers' loading does (the model's ``_init_weights``)."""
    wrong = [
        f"{n}: {tuple(t.shape)} != {tuple(expected[n].shape)}"
        for n, t in tensors.items()
        if t.shape != expected[n].shape
    ]
    if wrong:
        raise CheckpointError(f"checkpoint tensors do not match the model's config: {wrong[:3]}")
    _init_non_persistent_buffers(model, model)  # first, so that no init touches a loaded tensor
    for name, value in tensors.items():
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        value = value.to(dtype) if value.is_floating_point() else value
        if leaf in module._parameters:
            module._parameters[leaf] = nn.Parameter(value, requires_grad=False)
        else:
            module._buffers[leaf] = value
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise UnsupportedModelError(f"classifier-only loading left parts of the model without weights: {left[:3]}")


def _init_non_persistent_buffers(module: nn.Module, owner: Any) -> None:
    """Give ``module``'s non-persistent buffers (rotary frequencies, position ids) their values with the
    ``_init_weights`` of the model they belong to (a tower keeps its own), as transformers' loading does; its
    parameters are still on the meta device, where the init does nothing."""
    owner = module if isinstance(module, transformers.PreTrainedModel) else owner
    buffers = [b for b in module._non_persistent_buffers_set if module._buffers.get(b) is not None]
    if any(module._buffers[b].is_meta for b in buffers):
        for b in buffers:
            module._buffers[b] = torch.empty_like(module._buffers[b], device="cpu")
        owner._init_weights(module)
    for child in module.children():
        _init_non_persistent_buffers(child, owner)
