"""``SafetyGuard``: PSA-VLM safety modules attached to an already loaded vision-language model."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F

from psaguard.adapter_files import check_adapter_files
from psaguard.backbones import Backbone, VisionFeatures, resolve_backbone
from psaguard.config import CONFIG_NAME, SafetyGuardConfig
from psaguard.errors import CheckpointError, ConfigError, GuardInternalError, InvalidImageError, InvalidPromptError
from psaguard.generation import GenerationOptions, GuardedGeneration, GuardedGenerator, ImagesInput
from psaguard.images import ImageInput, load_image
from psaguard.modules import HeadLogits, SafetyModules
from psaguard.policy import GuardPolicy, decide, error_verdict
from psaguard.prompts import PromptEncoder
from psaguard.serialization import CONFIG_DIGEST_KEY, load_tensors, read_metadata, save_tensors
from psaguard.verdict import SafetyVerdict

if TYPE_CHECKING:
    from psaguard.conversation import PromptInput
    from psaguard.streaming import AsyncGuardedStream, GuardedStream
    from psaguard.wrapped import GuardedModel

__all__ = ["ADAPTER_NAME", "TORCH_DTYPES", "WEIGHTS_NAME", "GuardAnalysis", "SafetyGuard"]

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "psaguard_model.safetensors"
ADAPTER_NAME = "adapter"
"""Subfolder of a guard directory holding a Stage II LoRA adapter in PEFT's format."""

TORCH_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""dtype names used by configs -> torch dtypes."""


@dataclass(frozen=True)
class GuardAnalysis:
    """Verdicts of a batch plus the one vision pass they came from (reused by guarded generation).

    ``features`` is None when no image of the batch could be judged.
    """

    verdicts: list[SafetyVerdict]
    features: VisionFeatures | None
    judged: list[int]


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
        backbone: Backbone,
    ) -> None:
        self.model = model
        self.processor = processor
        self.config = config
        self.modules = modules
        self.backbone = backbone
        self.prompts = PromptEncoder(processor, config.head.max_prompt_tokens, backbone.vocab_size)

    # ------------------------------------------------------------------ construction and persistence
    @classmethod
    def attach(cls, model: torch.nn.Module, processor: Any, config: SafetyGuardConfig | None = None) -> SafetyGuard:
        """Attach fresh (untrained) safety modules, sized from ``model.config``, to ``model``."""
        backbone = resolve_backbone(model)
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
        from psaguard.classifier_only import check_adapter_leaves_verdicts, load_classifier_parts

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

    def analyze(self, images: Sequence[ImageInput], prompts: Sequence[str]) -> GuardAnalysis:
        """Judge a batch and keep its vision features for reuse.

        Requests that cannot be judged follow ``policy.on_error``: 'block' raises the typed error (fail
        closed), 'refuse' and 'allow' give an error verdict with that action. That covers bad inputs
        (:class:`InvalidImageError`, :class:`InvalidPromptError`) and internal failures: a ``RuntimeError``
        in the forward pass (device errors, out of memory) or non-finite scores (a tampered or diverged
        head), raised as :class:`GuardInternalError`. ``judged`` lists the requests whose rows are in
        ``features``, in order.
        """
        if isinstance(images, (str, bytes)) or isinstance(prompts, str):
            raise InvalidPromptError("classify_batch takes sequences of images and prompts; use classify for one")
        if len(images) != len(prompts):
            raise InvalidPromptError(f"got {len(images)} images but {len(prompts)} prompts")
        start = time.perf_counter()
        loaded, errors = [], {}
        for index, (image, prompt) in enumerate(zip(images, prompts)):
            try:
                self.prompts.token_ids(prompt)  # validates fully, so a bad prompt fails alone
                decoded = load_image(image, self.config.max_image_pixels, formats=self.config.image_formats)
                loaded.append((index, decoded, prompt))
            except (InvalidImageError, InvalidPromptError) as err:
                if self.policy.on_error == "block":
                    raise type(err)(f"request {index}: {err}") from err
                errors[index] = f"{type(err).__name__}: {err}"
        verdicts: dict[int, SafetyVerdict] = {}
        features = None
        if loaded:
            try:
                features, level_probs, type_probs = self._probabilities(
                    [image for _, image, _ in loaded], [prompt for _, _, prompt in loaded]
                )
            except GuardInternalError as err:
                if self.policy.on_error == "block":
                    raise
                errors.update({index: str(err) for index, _, _ in loaded})
                loaded = []
            else:
                verdicts = self._decide_rows(level_probs, type_probs, [index for index, _, _ in loaded], start)
        for index, reason in errors.items():
            verdicts[index] = error_verdict(reason, self.policy, self.config.taxonomy)
        return GuardAnalysis(
            verdicts=[verdicts[i] for i in range(len(prompts))],
            features=features,
            judged=[index for index, _, _ in loaded],
        )

    def judge_features(self, features: VisionFeatures, prompts: Sequence[str], start: float) -> list[SafetyVerdict]:
        """Verdicts for already encoded images (one per prompt), failing closed exactly like :meth:`analyze`.

        For callers that ran the vision tower themselves (the wrapped model); ``start`` is the
        ``time.perf_counter()`` the latency is measured from.
        """
        try:
            with torch.inference_mode():
                logits = self.head_logits(features, prompts)
        except RuntimeError as err:
            internal = _internal_error(err)
            if self.policy.on_error == "block":
                raise internal from err
            return [error_verdict(str(internal), self.policy, self.config.taxonomy) for _ in prompts]
        level_probs, type_probs = self._calibrated(logits)
        verdicts = self._decide_rows(level_probs, type_probs, list(range(len(prompts))), start)
        return [verdicts[i] for i in range(len(prompts))]

    def _probabilities(
        self, images: Sequence[Any], prompts: Sequence[str]
    ) -> tuple[VisionFeatures, torch.Tensor, torch.Tensor]:
        """Forward pass and calibrated probabilities; a RuntimeError inside becomes GuardInternalError."""
        try:
            features, logits = self._forward(images, prompts)
        except RuntimeError as err:
            raise _internal_error(err) from err
        return (features, *self._calibrated(logits))

    def _calibrated(self, logits: HeadLogits) -> tuple[torch.Tensor, torch.Tensor]:
        level_probs = F.softmax(logits.level.float() / self.config.head.level_temperature, dim=-1)
        type_probs = F.softmax(logits.type.float() / self.config.head.type_temperature, dim=-1)
        return level_probs, type_probs

    def _decide_rows(
        self, level_probs: torch.Tensor, type_probs: torch.Tensor, indices: Sequence[int], start: float
    ) -> dict[int, SafetyVerdict]:
        """Row ``r`` of the probabilities decides request ``indices[r]``; non-finite rows follow on_error.

        NaN scores (a tampered or diverged head) must never decide: NaN fails every threshold, which reads
        as level 0, i.e. 'allow'.
        """
        elapsed = (time.perf_counter() - start) * 1000.0
        verdicts: dict[int, SafetyVerdict] = {}
        for row, index in enumerate(indices):
            if not (level_probs[row].isfinite().all() and type_probs[row].isfinite().all()):
                err = GuardInternalError(f"request {index}: the safety head produced non-finite scores")
                if self.policy.on_error == "block":
                    raise err
                verdicts[index] = error_verdict(str(err), self.policy, self.config.taxonomy)
                continue
            verdicts[index] = decide(
                level_probs[row].tolist(), type_probs[row].tolist(), self.policy, self.config.taxonomy, elapsed
            )
        return verdicts

    @torch.inference_mode()
    def _forward(self, images: Sequence[Any], prompts: Sequence[str]) -> tuple[VisionFeatures, HeadLogits]:
        pixel_inputs = self.backbone.preprocess(self.processor, images)
        features = self.backbone.encode_images(**pixel_inputs)
        return features, self.head_logits(features, prompts)

    def head_logits(self, features: VisionFeatures, prompts: Sequence[str]) -> HeadLogits:
        """Safety-head logits for already encoded images and their prompts (differentiable)."""
        ids, mask = self.prompts.encode(prompts)
        device = self.modules.head_tokens.device
        query = self.backbone.embed_tokens(ids).to(device)
        return self.modules(features.patches.to(device), query, mask.to(device))

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
        return GuardedGenerator(self, options).generate(image, prompt, **generate_kwargs)

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
        return GuardedGenerator(self, options).generate_batch(
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
        return GuardedGenerator(self, options).stream(image, prompt, **generate_kwargs)

    def astream(
        self,
        image: ImagesInput,
        prompt: PromptInput,
        *,
        options: GenerationOptions | None = None,
        **generate_kwargs: Any,
    ) -> AsyncGuardedStream:
        """Async :meth:`stream`: ``async for chunk in guard.astream(...)``."""
        from psaguard.streaming import AsyncGuardedStream

        return AsyncGuardedStream(GuardedGenerator(self, options), image, prompt, generate_kwargs)

    def wrap(self, model: torch.nn.Module | None = None, *, options: GenerationOptions | None = None) -> GuardedModel:
        """A drop-in stand-in for ``model`` (default: the guard's) whose ``generate`` is guarded."""
        from psaguard.wrapped import GuardedModel

        return GuardedModel(self, model, options=options)

    # ------------------------------------------------------------------ helpers
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


def _internal_error(err: RuntimeError) -> GuardInternalError:
    # torch raises RuntimeError (and OutOfMemoryError, a subclass) for device, memory and kernel failures
    logger.warning("guard forward pass failed: %s: %s", type(err).__name__, err)
    return GuardInternalError(f"the guard failed while judging: {type(err).__name__}: {err}")


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
