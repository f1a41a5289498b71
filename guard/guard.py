"""``SafetyGuard``: PSA-VLM safety modules attached to an already loaded vision-language model."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from psaguard.adapter_files import check_adapter_files
from psaguard.backbones import Backbone, VisionFeatures, resolve_backbone, unwrap_model
from psaguard.classifier import Classifier, GuardAnalysis
from psaguard.classifier_only import check_adapter_leaves_verdicts, load_classifier_parts
from psaguard.config import CONFIG_NAME, SafetyGuardConfig
from psaguard.conversation import PromptInput
from psaguard.errors import CheckpointError, ConfigError
from psaguard.generation import GuardedGenerator, ImagesInput
from psaguard.images import ImageInput
from psaguard.modules import HeadLogits, SafetyModules
from psaguard.plan import GuardedGeneration
from psaguard.policy import GenerationOptions, GuardPolicy
from psaguard.prompts import PromptEncoder
from psaguard.serialization import CONFIG_DIGEST_KEY, load_tensors, read_metadata, save_tensors
from psaguard.streaming import AsyncGuardedStream, GuardedStream
from psaguard.verdict import ResponseVerdict, SafetyVerdict
from psaguard.wrapped import GuardedModel

__all__ = ["ADAPTER_NAME", "TORCH_DTYPES", "WEIGHTS_NAME", "GuardAnalysis", "SafetyGuard"]

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "psaguard_model.safetensors"
ADAPTER_NAME = "adapter"
"""Subfolder of a guard directory holding a Stage II LoRA adapter in PEFT's format."""

TORCH_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""dtype names used by configs -> torch dtypes."""


class SafetyGuard:
    """Judges (image, prompt) requests with PSA-VLM safety modules on top of a loaded model.

    Build one with :meth:`attach` (fresh modules) or :meth:`from_pretrained` (trained modules); the model
    and processor stay the caller's and are not modified. Thread-safe: classification mutates nothing.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        config: SafetyGuardConfig,
        modules: SafetyModules,
        backbone: Backbone | None = None,
    ) -> None:
        if backbone is None or backbone.model is not model:
            backbone = resolve_backbone(model)
        self.classifier = Classifier(backbone, processor, config, modules)
        """What judges: the backbone, the safety modules and the prompt encoder (everything below the facade)."""

    @property
    def model(self) -> torch.nn.Module:
        """The model the guard generates with (as given, or wrapped with the guard's LoRA adapter)."""
        return self.classifier.model

    @property
    def processor(self) -> Any:
        return self.classifier.processor

    @property
    def config(self) -> SafetyGuardConfig:
        return self.classifier.config

    @property
    def modules(self) -> SafetyModules:
        return self.classifier.modules

    @property
    def backbone(self) -> Backbone:
        return self.classifier.backbone

    @property
    def prompts(self) -> PromptEncoder:
        return self.classifier.prompts

    # ------------------------------------------------------------------ construction and persistence
    @classmethod
    def attach(cls, model: torch.nn.Module, processor: Any, config: SafetyGuardConfig | None = None) -> SafetyGuard:
        """Attach fresh (untrained) safety modules, sized from ``model.config``, to ``model``."""
        backbone = resolve_backbone(model)
        backbone.check_processor(processor)  # before any module is built
        config = (config or SafetyGuardConfig()).model_copy(update={"fingerprint": backbone.fingerprint()})
        return cls(model, processor, config, cls._build_modules(config, backbone), backbone)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        model: torch.nn.Module,
        processor: Any,
        *,
        policy: GuardPolicy | None = None,
        revision: str | None = None,
        load_adapter: bool = True,
        allow_unverified: bool = False,
        accept_edited_config: bool = False,
    ) -> SafetyGuard:
        """Load a saved guard (a local directory or a hub repo id) onto ``model``.

        If the guard has a Stage II LoRA adapter (``adapter/``) and ``load_adapter`` is True, the guard's
        model becomes ``PeftModel.from_pretrained(model, <dir>/adapter)``; PEFT injects the adapter into
        ``model`` in place, so pass ``load_adapter=False`` to leave ``model`` untouched.

        The weights must carry their checksum and the config's digest (both written by
        :meth:`save_pretrained`); ``allow_unverified=True`` loads files lacking them (re-saved by another tool).
        A config edited after saving is refused unless ``accept_edited_config=True``; passing ``policy=`` is
        the way to change the policy without editing the file.

        Raises :class:`~psaguard.errors.CheckpointMismatchError` when the guard was trained for a different
        base model, and :class:`~psaguard.errors.CheckpointError` for missing, truncated or tampered files.
        """
        directory = _resolve_checkpoint(path, revision)
        config = _load_config(directory, allow_unverified, accept_edited_config)
        if policy is not None:
            config = config.model_copy(update={"policy": policy.validate_against(config.taxonomy)})
        backbone = resolve_backbone(model)
        if config.fingerprint is None:
            raise CheckpointError(f"{directory / CONFIG_NAME} has no base-model fingerprint")
        config.fingerprint.check(backbone.fingerprint())
        backbone.check_processor(processor)  # before any weight is read
        modules = cls._build_modules(config, backbone)
        expected = {name: (t.shape, t.dtype) for name, t in modules.state_dict().items()}
        tensors = load_tensors(directory / WEIGHTS_NAME, expected, allow_unverified=allow_unverified)
        modules.load_state_dict(tensors)
        adapter = directory / ADAPTER_NAME
        if load_adapter and (adapter / "adapter_config.json").is_file():
            model = _load_adapter(model, adapter)
        return cls(model, processor, config, modules, backbone)

    @classmethod
    def from_pretrained_classifier(
        cls,
        path: str | Path,
        model_path: str | Path,
        processor: Any | None = None,
        *,
        policy: GuardPolicy | None = None,
        revision: str | None = None,
        model_revision: str | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        allow_unverified: bool = False,
        accept_edited_config: bool = False,
    ) -> SafetyGuard:
        """Load a saved guard for classification only, reading just the vision tower and token embeddings.

        ``model_path`` is the base model's checkpoint (a ``save_pretrained`` directory in safetensors,
        possibly sharded, or a hub repo id, of which only the config, index, processor files and the shards
        holding those tensors are fetched). The guard judges exactly as one loaded onto the full model with
        :meth:`from_pretrained`, so it can front a VLM served elsewhere; ``generate``, ``stream`` and
        ``wrap()`` raise :class:`~psaguard.errors.GenerationUnavailableError` (``wrap(full_model)`` works).
        ``processor`` defaults to the one saved with the base model; ``dtype`` (default: the checkpoint's)
        and ``device`` (default: CPU) place the loaded parts. A Stage II LoRA adapter is not loaded, and a
        guard whose adapter changes the vision tower or embeddings is refused. ``allow_unverified`` and
        ``accept_edited_config`` are as in :meth:`from_pretrained`.

        Raises :class:`~psaguard.errors.CheckpointMismatchError` when the guard was trained for a different
        base model, :class:`~psaguard.errors.UnsupportedModelError` for a non-LLaVA checkpoint, and
        :class:`~psaguard.errors.CheckpointError` for missing or unreadable files.
        """
        directory = _resolve_checkpoint(path, revision)
        # A bad or mismatched guard fails before any base-model weight is read (or fetched).
        fingerprint = SafetyGuardConfig.load(directory).fingerprint
        check_adapter_leaves_verdicts(directory / ADAPTER_NAME)
        model, processor = load_classifier_parts(
            model_path, processor, revision=model_revision, dtype=dtype, device=device, fingerprint=fingerprint
        )
        return cls.from_pretrained(
            directory,
            model,
            processor,
            policy=policy,
            load_adapter=False,
            allow_unverified=allow_unverified,
            accept_edited_config=accept_edited_config,
        )

    def save_pretrained(self, path: str | Path) -> Path:
        """Save the config (JSON) and the safety modules (safetensors) to ``path``, atomically."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        metadata = {"format": "pt", CONFIG_DIGEST_KEY: self.config.digest()}
        save_tensors(path / WEIGHTS_NAME, self.modules.state_dict(), metadata=metadata)
        self.config.save(path)
        return path

    def with_policy(self, policy: GuardPolicy) -> SafetyGuard:
        """A guard sharing this one's model and modules but deciding with ``policy``."""
        try:
            policy.validate_against(self.config.taxonomy)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        config = self.config.model_copy(update={"policy": policy})
        return type(self)(self.model, self.processor, config, self.modules, self.backbone)

    @property
    def policy(self) -> GuardPolicy:
        return self.config.policy

    # ------------------------------------------------------------------ classification
    def classify(self, image: ImageInput, prompt: str) -> SafetyVerdict:
        """Judge one request without running the language model."""
        return self.classify_batch([image], [prompt])[0]

    def classify_batch(self, images: Sequence[ImageInput], prompts: Sequence[str]) -> list[SafetyVerdict]:
        """Judge a batch of requests in one forward pass; same verdicts as one by one.

        Probabilities match single :meth:`classify` calls within 1e-6 (a padded batch reorders float32 sums).
        """
        return self.analyze(images, prompts).verdicts

    async def aclassify(self, image: ImageInput, prompt: str) -> SafetyVerdict:
        """Async :meth:`classify` (runs in a worker thread)."""
        return await asyncio.to_thread(self.classify, image, prompt)

    async def aclassify_batch(self, images: Sequence[ImageInput], prompts: Sequence[str]) -> list[SafetyVerdict]:
        """Async :meth:`classify_batch` (runs in a worker thread)."""
        return await asyncio.to_thread(self.classify_batch, images, prompts)

    def classify_response(self, image: ImageInput, prompt: str, response: str) -> ResponseVerdict:
        """Judge an answer to an (image, prompt) request, with no language-model decode (docs/responses.md).

        Works on a classifier-only guard too, so answers of a VLM served elsewhere can be checked. Raises
        :class:`~psaguard.errors.ResponseHeadMissingError` for a guard without a response head.
        """
        return self.classify_response_batch([image], [prompt], [response])[0]

    def classify_response_batch(
        self, images: Sequence[ImageInput], prompts: Sequence[str], responses: Sequence[str]
    ) -> list[ResponseVerdict]:
        """Judge a batch of answers in one vision pass; same verdicts as one by one."""
        return self.classifier.analyze_responses(images, prompts, responses)

    async def aclassify_response(self, image: ImageInput, prompt: str, response: str) -> ResponseVerdict:
        """Async :meth:`classify_response` (runs in a worker thread)."""
        return await asyncio.to_thread(self.classify_response, image, prompt, response)

    async def aclassify_response_batch(
        self, images: Sequence[ImageInput], prompts: Sequence[str], responses: Sequence[str]
    ) -> list[ResponseVerdict]:
        """Async :meth:`classify_response_batch` (runs in a worker thread)."""
        return await asyncio.to_thread(self.classify_response_batch, images, prompts, responses)

    def analyze(self, images: Sequence[ImageInput], prompts: Sequence[str]) -> GuardAnalysis:
        """Judge a batch and keep its vision features for reuse (see :meth:`Classifier.analyze`).

        Requests that cannot be judged follow ``policy.on_error``: 'block' raises the typed error (fail
        closed), 'refuse' and 'allow' give an error verdict with that action.
        """
        return self.classifier.analyze(images, prompts)

    def judge_features(self, features: VisionFeatures, prompts: Sequence[str], start: float) -> list[SafetyVerdict]:
        """Verdicts for already encoded images (one per prompt), failing closed exactly like :meth:`analyze`."""
        return self.classifier.judge(features, prompts, start)

    def head_logits(self, features: VisionFeatures, prompts: Sequence[str]) -> HeadLogits:
        """Safety-head logits for already encoded images and their prompts (differentiable)."""
        return self.classifier.head_logits(features, prompts)

    def response_head_logits(
        self, features: VisionFeatures, prompts: Sequence[str], responses: Sequence[str]
    ) -> HeadLogits:
        """Response-head logits for already encoded images, prompts and answers (differentiable; training)."""
        return self.classifier.response_head_logits(features, prompts, responses)

    # ------------------------------------------------------------------ guarded generation (psaguard.generation)
    def generate(
        self,
        image: ImagesInput,
        prompt: PromptInput,
        *,
        options: GenerationOptions | None = None,
        **generate_kwargs: Any,
    ) -> GuardedGeneration:
        """Judge ``image`` (one or a list) with ``prompt`` (a string or a chat conversation), then answer per policy.

        ``generate_kwargs`` go to ``model.generate``. Raises :class:`~psaguard.errors.GuardBlocked` for 'block'.
        """
        return self._generator(options).generate(image, prompt, **generate_kwargs)

    def generate_batch(
        self,
        images: Sequence[ImagesInput],
        prompts: Sequence[PromptInput],
        *,
        options: GenerationOptions | None = None,
        return_blocked: bool = False,
        **generate_kwargs: Any,
    ) -> list[GuardedGeneration]:
        """:meth:`generate` for a batch: one vision pass and one ``model.generate`` call for all requests."""
        return self._generator(options).generate_batch(
            images, prompts, return_blocked=return_blocked, **generate_kwargs
        )

    async def agenerate(
        self,
        image: ImagesInput,
        prompt: PromptInput,
        *,
        options: GenerationOptions | None = None,
        **generate_kwargs: Any,
    ) -> GuardedGeneration:
        """Async :meth:`generate` (runs in a worker thread)."""
        return await asyncio.to_thread(self.generate, image, prompt, options=options, **generate_kwargs)

    async def agenerate_batch(
        self,
        images: Sequence[ImagesInput],
        prompts: Sequence[PromptInput],
        *,
        options: GenerationOptions | None = None,
        return_blocked: bool = False,
        **generate_kwargs: Any,
    ) -> list[GuardedGeneration]:
        """Async :meth:`generate_batch` (runs in a worker thread)."""
        return await asyncio.to_thread(
            self.generate_batch, images, prompts, options=options, return_blocked=return_blocked, **generate_kwargs
        )

    def stream(
        self,
        image: ImagesInput,
        prompt: PromptInput,
        *,
        options: GenerationOptions | None = None,
        **generate_kwargs: Any,
    ) -> GuardedStream:
        """Judge now, then iterate the answer's text chunks (see :class:`~psaguard.streaming.GuardedStream`)."""
        return self._generator(options).stream(image, prompt, **generate_kwargs)

    def astream(
        self,
        image: ImagesInput,
        prompt: PromptInput,
        *,
        options: GenerationOptions | None = None,
        **generate_kwargs: Any,
    ) -> AsyncGuardedStream:
        """Async :meth:`stream`: ``async for chunk in guard.astream(...)``."""
        generator = self._generator(options)
        return AsyncGuardedStream(partial(generator.stream, image, prompt, **generate_kwargs))

    def wrap(self, model: torch.nn.Module | None = None, *, options: GenerationOptions | None = None) -> GuardedModel:
        """A drop-in stand-in for ``model`` (default: the guard's) whose ``generate`` is guarded."""
        return GuardedModel(self.classifier, model, options=options)

    # ------------------------------------------------------------------ helpers
    def _generator(self, options: GenerationOptions | None) -> GuardedGenerator:
        return GuardedGenerator(self.classifier, options)

    @staticmethod
    def _build_modules(config: SafetyGuardConfig, backbone: Backbone) -> SafetyModules:
        modules = SafetyModules(config, backbone.vision_hidden_size, backbone.text_hidden_size)
        dtype = backbone.embedding_dtype if config.dtype == "auto" else TORCH_DTYPES[config.dtype]
        if not dtype.is_floating_point:
            dtype = torch.float32
        return modules.to(device=backbone.device, dtype=dtype).eval()

    def __repr__(self) -> str:
        fingerprint = self.config.fingerprint
        return (
            f"SafetyGuard(family={fingerprint.family if fingerprint else None!r}, "
            f"pooling={self.config.head.pooling!r}, tokens={self.config.tokens.num_tokens}, "
            f"params={sum(p.numel() for p in self.modules.parameters()):,})"
        )


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
    local = Path(path)
    if local.is_dir():
        return local
    if local.exists() or str(path).startswith((".", "/", "~")) or str(path).count("/") > 1:
        raise CheckpointError(f"{path} is not a directory holding a saved guard")
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
