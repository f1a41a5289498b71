"""Loading a saved guard: the checkpoint's files, its config, its weights and its LoRA adapter -> the parts
:class:`psaguard.guard.SafetyGuard` is made of.

Below the facade (it never imports it): :func:`load_guard_parts` and :func:`load_classifier_model` return
parts, the facade constructs itself from them. Holds the checkpoint's names (:data:`WEIGHTS_NAME`,
:data:`ADAPTER_NAME`), which the trainer imports from here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import torch

from psaguard.backbones import Backbone, resolve_backbone, unwrap_model
from psaguard.categories.bank import CategoryBank, category_width
from psaguard.checkpoints.adapter_files import check_adapter_files
from psaguard.checkpoints.reader import local_dir
from psaguard.checkpoints.serialization import CONFIG_DIGEST_KEY, load_tensors, read_metadata
from psaguard.classifier_only import check_adapter_leaves_verdicts, load_classifier_parts
from psaguard.config import CONFIG_NAME, SafetyGuardConfig
from psaguard.dtypes import DTYPE_NAMES, DtypeRequest, config_dtype, parse_dtype, resolve_dtype
from psaguard.errors import CheckpointError, ConfigError
from psaguard.modules import SafetyModules
from psaguard.policy import GuardPolicy

__all__ = [
    "ADAPTER_NAME",
    "TORCH_DTYPES",
    "WEIGHTS_NAME",
    "GuardParts",
    "build_modules",
    "load_base_model",
    "load_classifier_model",
    "load_guard_parts",
]

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "psaguard_model.safetensors"
ADAPTER_NAME = "adapter"
"""Subfolder of a guard directory holding a Stage II LoRA adapter in PEFT's format."""

TORCH_DTYPES: dict[str, torch.dtype] = DTYPE_NAMES
"""dtype names used by configs -> torch dtypes (:data:`psaguard.dtypes.DTYPE_NAMES`)."""


class GuardParts(NamedTuple):
    """What a guard is made of, in the order :class:`~psaguard.guard.SafetyGuard` takes them."""

    model: torch.nn.Module
    processor: Any
    config: SafetyGuardConfig
    modules: SafetyModules
    backbone: Backbone
    bank: CategoryBank | None


def build_modules(config: SafetyGuardConfig, backbone: Backbone, dtype: DtypeRequest = None) -> SafetyModules:
    """The modules on the model's device, in ``dtype``, else ``config.dtype``, where "auto" follows the model's
    embeddings unless the device has no fast path for their dtype (a bfloat16 model on most CPUs)."""
    requested = dtype if dtype is not None else config.dtype
    choice = resolve_dtype(requested, backbone.device, backbone.embedding_dtype)
    logger.info("safety modules compute in %s (%s)", choice.dtype, choice.reason)
    modules = SafetyModules(config, backbone.vision_hidden_size, backbone.text_hidden_size)
    return modules.to(device=backbone.device, dtype=choice.torch_dtype).eval()


def load_guard_parts(
    path: str | Path,
    model: torch.nn.Module,
    processor: Any,
    *,
    policy: GuardPolicy | None = None,
    revision: str | None = None,
    load_adapter: bool = True,
    allow_unverified: bool = False,
    accept_edited_config: bool = False,
    dtype: DtypeRequest = None,
) -> GuardParts:
    """The parts of the guard saved in ``path`` on ``model`` (:meth:`psaguard.guard.SafetyGuard.from_pretrained`
    documents the arguments and the errors)."""
    directory = _resolve_checkpoint(path, revision)
    config = _load_config(directory, allow_unverified, accept_edited_config)
    if policy is not None:
        config = config.model_copy(update={"policy": policy.validate_against(config.taxonomy)})
    backbone = resolve_backbone(model)
    if config.fingerprint is None:
        raise CheckpointError(f"{directory / CONFIG_NAME} has no base-model fingerprint")
    backbone.check_processor(processor)  # before any weight is read; adapters may measure sizes on it
    config.fingerprint.check(backbone.fingerprint())
    modules = build_modules(config, backbone, dtype)
    # The saved bank's shapes follow from the config's categories: a file with more, fewer or resized rows fails.
    width = category_width(backbone.text_hidden_size, backbone.vision_hidden_size)
    bank_shapes = CategoryBank.expected(len(config.categories), width)
    expected = {**{name: (t.shape, t.dtype) for name, t in modules.state_dict().items()}, **bank_shapes}
    tensors = load_tensors(directory / WEIGHTS_NAME, expected, allow_unverified=allow_unverified)
    bank = CategoryBank.from_tensors(config.categories, tensors) if bank_shapes else None
    modules.load_state_dict({name: t for name, t in tensors.items() if name not in bank_shapes})
    adapter = directory / ADAPTER_NAME
    if load_adapter and (adapter / "adapter_config.json").is_file():
        model = _load_adapter(model, adapter)
    return GuardParts(model, processor, config, modules, backbone, bank)


def load_base_model(
    model_path: str | Path, *, device: str | torch.device | None = None, dtype: DtypeRequest = None
) -> tuple[torch.nn.Module, Any]:
    """The full model at ``model_path`` (a directory or hub id) on ``device`` (default CPU), in eval mode and in
    the dtype the device runs fast unless ``dtype`` says otherwise, and its processor. Raises
    :class:`ConfigError` when the model cannot be loaded."""
    # Loaded here: importing transformers' auto classes adds warning filters, and `import psaguard` must not.
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    device = torch.device(device or "cpu")
    try:
        choice = resolve_dtype(dtype, device.type, config_dtype(AutoConfig.from_pretrained(model_path)))
        logger.info("the model computes in %s (%s)", choice.dtype, choice.reason)
        model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=choice.torch_dtype)
        processor = AutoProcessor.from_pretrained(model_path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load model {str(model_path)!r}: {err}") from err
    return model.to(device).eval(), processor


def load_classifier_model(
    path: str | Path,
    model_path: str | Path,
    processor: Any | None = None,
    *,
    revision: str | None = None,
    model_revision: str | None = None,
    dtype: DtypeRequest = None,
    device: str | torch.device | None = None,
) -> tuple[Path, torch.nn.Module, Any]:
    """The guard's local directory and the classifier-only model and processor it judges with
    (:meth:`psaguard.guard.SafetyGuard.from_pretrained_classifier` documents the arguments and the errors)."""
    if dtype is not None and dtype != "auto":
        parse_dtype(dtype)  # an unknown name fails before anything is read
    directory = _resolve_checkpoint(path, revision)
    # A bad or mismatched guard fails before any base-model weight is read (or fetched).
    fingerprint = SafetyGuardConfig.load(directory).fingerprint
    check_adapter_leaves_verdicts(directory / ADAPTER_NAME)
    model, processor = load_classifier_parts(
        model_path, processor, revision=model_revision, dtype=dtype, device=device, fingerprint=fingerprint
    )
    return directory, model, processor


def _load_adapter(model: torch.nn.Module, adapter: Path) -> torch.nn.Module:
    """``model`` wrapped with the PEFT adapter saved in ``adapter``."""
    if unwrap_model(model) is not model:
        # PEFT would nest the wrappers, find none of the adapter's keys and load nothing (only a warning).
        raise CheckpointError(
            f"{adapter} holds the guard's Stage II LoRA adapter, and the model is already wrapped (PEFT); pass the "
            "bare model (model.get_base_model(), or merge_and_unload() to keep your adapter's effect), or "
            "load_adapter=False to keep your adapters and skip the guard's"
        )
    try:
        from peft import PeftModel
    except ImportError as err:
        raise CheckpointError(f"{adapter} holds a LoRA adapter; install peft (psaguard[train]) to load it") from err
    check_adapter_files(adapter)
    logger.info("loading LoRA adapter %s into the model", adapter)
    try:
        return PeftModel.from_pretrained(model, str(adapter))
    # TypeError: a config value of a type PEFT did not expect, past the checks of check_adapter_files.
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(f"cannot load the LoRA adapter in {adapter}: {err}") from err


def _load_config(directory: Path, allow_unverified: bool, accept_edited: bool) -> SafetyGuardConfig:
    """The saved config, checked against the digest recorded in the weights beside it."""
    recorded = read_metadata(directory / WEIGHTS_NAME).get(CONFIG_DIGEST_KEY)
    if recorded is None and not allow_unverified:
        raise CheckpointError(
            f"{directory / WEIGHTS_NAME} records no digest of {CONFIG_NAME}, so an edited config cannot be "
            "detected; pass allow_unverified=True to load it anyway, then save_pretrained() to record one"
        )
    return SafetyGuardConfig.load(directory, digest=recorded, accept_edited=accept_edited)


def _resolve_checkpoint(path: str | Path, revision: str | None) -> Path:
    """A local directory as is; otherwise download the guard files of a hub repo."""
    local = local_dir(path, "a saved guard")
    if local is not None:
        return local
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                str(path), revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, f"{ADAPTER_NAME}/*"]
            )
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot fetch guard {path!r} from the hub: {err}") from err
