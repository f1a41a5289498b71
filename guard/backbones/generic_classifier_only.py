"""Classifier-only mode for every model the generic adapter handles, with no family code.

The generic adapter's vision pass is the model's own ``get_image_features``: the vision tower and the
multimodal projector (and parameters such as LLaVA-OneVision's ``image_newline``); the safety head reads the
prompt's input embeddings. :func:`load_generic_classifier_only` builds the model's skeleton on the meta
device from its config, reads from the (sharded) safetensors checkpoint exactly the tensors of those parts,
found by the model's own module names (checkpoint keys renamed as transformers renames them on load),
materialises only them, and replaces the language model by :class:`LanguageModelRemoved` (its input
embeddings and nothing else) and any other part left (the LM head) by :class:`PartRemoved`; the model's
``forward`` and ``generate`` raise :class:`~psaguard.errors.GenerationUnavailableError`. The result is
still the family's model class, so :class:`ClassifierOnlyGenericBackbone` (the generic adapter, minus
generation) encodes images and embeds prompts exactly as the full model does.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, NoReturn

import torch
from torch import nn

from psaguard.backbones.base import unwrap_model
from psaguard.backbones.generic import GenericBackbone
from psaguard.backbones.registry import register_backbone
from psaguard.checkpoints.reader import CheckpointReader
from psaguard.config import ModelFingerprint
from psaguard.dtypes import DtypeRequest, resolve_dtype
from psaguard.errors import CheckpointError, GenerationUnavailableError, UnsupportedModelError

__all__ = [
    "OTHER_MODALITIES",
    "ClassifierOnlyGenericBackbone",
    "LanguageModelRemoved",
    "PartRemoved",
    "generic_skeleton",
    "load_generic_classifier_only",
]

logger = logging.getLogger(__name__)

OTHER_MODALITIES: tuple[str, ...] = ("audio", "speech", "sound")
"""Parts of the multimodal model whose name holds one of these are not read (images do not pass through them)."""


def _cannot_generate(config: Any) -> GenerationUnavailableError:
    return GenerationUnavailableError.classifier_only(
        config.model_type, "the vision tower, projector and input embeddings", "no language model"
    )


class PartRemoved(nn.Module):
    """A part of the model classifier-only mode does not load (e.g. the LM head); calling it raises."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    def forward(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise _cannot_generate(self.config)


class LanguageModelRemoved(PartRemoved):
    """The language model of a classifier-only model: its input-embedding table under its own name, no layers."""

    def __init__(self, config: Any, path: str, embeddings: nn.Module) -> None:
        super().__init__(config)
        self._embedding_path = path
        *containers, leaf = path.split(".")
        owner: nn.Module = self
        for container in containers:  # the embeddings keep their path, so checkpoint keys name them as before
            owner.add_module(container, nn.Module())
            owner = owner.get_submodule(container)
        owner.add_module(leaf, embeddings)

    def get_input_embeddings(self) -> nn.Module:
        """The input-embedding table (as on the language model it replaces)."""
        return self.get_submodule(self._embedding_path)


@register_backbone
class ClassifierOnlyGenericBackbone(GenericBackbone):
    """The generic adapter on a model loaded by :func:`load_generic_classifier_only`: it classifies exactly as
    on the full model and refuses to generate. Registered after :class:`GenericBackbone`, so it is tried first."""

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return _is_classifier_only(unwrap_model(model)) and super().supports(model)

    def check_can_generate(self) -> NoReturn:
        raise _cannot_generate(self.config)


def generic_skeleton(config: Any) -> nn.Module:
    """The model of ``config`` (its image-text-to-text class) on the meta device: names and shapes, no memory."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    model_class = getattr(transformers, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(config.model_type, ""), None)
    if model_class is None:
        raise UnsupportedModelError(f"transformers has no image-text-to-text model for {config.model_type!r}")
    with torch.device("meta"):
        model = model_class(config)
    if reason := GenericBackbone.why_unsupported(model):
        raise UnsupportedModelError(f"a {config.model_type!r} model cannot be loaded classifier-only: {reason}")
    return model.eval()


def load_generic_classifier_only(
    reader: CheckpointReader,
    config: Any,
    *,
    dtype: DtypeRequest = None,
    device: str | torch.device | None = None,
    fingerprint: ModelFingerprint | None = None,
) -> nn.Module:
    """The model of ``config`` with only its vision tower, projector and input embeddings read from ``reader``.

    ``fingerprint`` (the guard's) is checked on the weightless skeleton before any tensor is read (its vision
    width, measured on the processor's probe image, is checked when the guard attaches). ``dtype`` and
    ``device`` as in :func:`~psaguard.backbones.encoder_checkpoint.load_encoder_only`.
    """
    model = generic_skeleton(config)
    _prune(model)
    if fingerprint is not None:
        fingerprint.model_copy(update={"vision_hidden_size": None}).check(
            ClassifierOnlyGenericBackbone(model).fingerprint()
        )
    expected = model.state_dict()  # what is left: exactly the tensors the guard reads
    keys = _checkpoint_keys(reader, model, expected)
    tensors = reader.read(keys.values())
    embedding = next(name for name, p in model.named_parameters() if p is model.get_input_embeddings().weight)
    choice = resolve_dtype(dtype, device or "cpu", tensors[keys[embedding]].dtype)
    logger.info("classifier-only parts compute in %s (%s)", choice.dtype, choice.reason)
    _materialise(model, {name: tensors[key] for name, key in keys.items()}, expected, choice.torch_dtype)
    model.requires_grad_(False)
    logger.info(
        "loaded %s parameters (vision tower, projector, input embeddings: %d tensors) of %s",
        f"{sum(p.numel() for p in model.parameters()):,}",
        len(keys),
        reader.directory,
    )
    return model.to(device) if device is not None else model


def _is_classifier_only(model: nn.Module) -> bool:
    return any(isinstance(module, LanguageModelRemoved) for module in model.modules())


def _prune(model: nn.Module) -> None:
    """Keep what the vision pass and the prompt's embeddings read: every part of the multimodal model but the
    language model (replaced by its input embeddings alone, at their own path) and other modalities' towers;
    every other part of ``model`` (the LM head) becomes a :class:`PartRemoved`."""
    embedding = model.get_input_embeddings()
    parts = getattr(model, "model", model)
    lm_name = next(
        (name for name, child in parts.named_children() if any(m is embedding for m in child.modules())), None
    )
    if lm_name is None:
        raise UnsupportedModelError(
            f"cannot find the language model of a {model.config.model_type!r} model (no part of it holds its input "
            "embeddings), so it cannot be loaded classifier-only"
        )
    language_model = parts.get_submodule(lm_name)
    path = next(name for name, module in language_model.named_modules() if module is embedding)
    setattr(parts, lm_name, LanguageModelRemoved(model.config, path, embedding))
    for name, _ in list(parts.named_children()):
        if any(word in name.lower() for word in OTHER_MODALITIES):
            setattr(parts, name, PartRemoved(model.config))
    if parts is not model:
        for name, child in list(model.named_children()):
            if child is not parts:
                setattr(model, name, PartRemoved(model.config))
    for module in {model, parts}:  # the model's own forward and generate refuse before touching a removed part
        module.register_forward_pre_hook(partial(_refuse, model.config))
    model.generate = partial(_refuse, model.config)
    if model.get_input_embeddings() is not embedding:
        raise UnsupportedModelError(
            f"a {model.config.model_type!r} model does not reach its input embeddings through its language model's "
            "get_input_embeddings, so it cannot be loaded classifier-only"
        )


def _init_non_persistent_buffers(module: nn.Module, owner: Any) -> None:
    """Give ``module``'s non-persistent buffers (rotary frequencies, position ids) their values with the
    ``_init_weights`` of the model they belong to (a tower keeps its own), as transformers' loading does; its
    parameters are still on the meta device, where the init does nothing."""
    from transformers import PreTrainedModel

    owner = module if isinstance(module, PreTrainedModel) else owner
    buffers = [b for b in module._non_persistent_buffers_set if module._buffers.get(b) is not None]
    if any(module._buffers[b].is_meta for b in buffers):
        for b in buffers:
            module._buffers[b] = torch.empty_like(module._buffers[b], device="cpu")
        owner._init_weights(module)
    for child in module.children():
        _init_non_persistent_buffers(child, owner)


def _refuse(config: Any, *args: Any, **kwargs: Any) -> NoReturn:
    raise _cannot_generate(config)


def _checkpoint_keys(reader: CheckpointReader, model: nn.Module, expected: dict[str, torch.Tensor]) -> dict[str, str]:
    """Model tensor name -> checkpoint key for every tensor of ``expected``, renaming checkpoint keys as transformers
    does on load (legacy layouts); a tensor the checkpoint lacks, holds twice or needs converting is refused."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    found: dict[str, list[str]] = {}
    converted = []
    for key in reader.weight_map:
        name, pattern = rename_source_key(key, renamings, converters, model.base_model_prefix, expected)
        if name not in expected and key in expected:
            name, pattern = key, None
        if name in expected:
            found.setdefault(name, []).append(key)
            if pattern is not None:
                converted.append(key)
    twice = {name: keys for name, keys in found.items() if len(keys) > 1}
    missing = sorted(expected.keys() - found.keys())
    if converted or twice or missing:
        problem = (
            f"needs converting ({converted[:3]})"
            if converted
            else f"holds weights twice ({dict(list(twice.items())[:3])})"
            if twice
            else f"lacks {len(missing)} of the tensors the guard reads, e.g. {missing[:3]}"
        )
        raise CheckpointError(f"checkpoint {reader.directory} {problem}")
    return {name: keys[0] for name, keys in found.items()}


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
