"""``SafetyGuard``: PSA-VLM safety modules attached to an already loaded vision-language model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from psaguard.backbones import Backbone, VisionFeatures, resolve_backbone
from psaguard.categories.bank import CategoryBank
from psaguard.checkpoints.serialization import CONFIG_DIGEST_KEY, save_tensors
from psaguard.classifier import Classifier, GuardAnalysis
from psaguard.config import SafetyGuardConfig
from psaguard.conversation import PromptInput
from psaguard.dtypes import DtypeRequest, dtype_name
from psaguard.errors import ConfigError
from psaguard.generation.generator import GuardedGenerator, ImagesInput
from psaguard.generation.monitor import AnswerMonitor
from psaguard.generation.plan import GuardedGeneration
from psaguard.generation.streaming import GuardedStream
from psaguard.generation.wrapped import GuardedModel
from psaguard.guard_async import AsyncGuardMethods
from psaguard.guard_categories import CategoryMethods
from psaguard.images.decode import ImageInput
from psaguard.loading import (
    ADAPTER_NAME,
    TORCH_DTYPES,
    WEIGHTS_NAME,
    build_modules,
    load_base_model,
    load_classifier_model,
    load_guard_parts,
)
from psaguard.modules import HeadLogits, SafetyModules
from psaguard.policy import GenerationOptions, GuardPolicy, TextOnlyAction
from psaguard.prompts import PromptEncoder
from psaguard.request import GuardRequest
from psaguard.verdict import ResponseVerdict, SafetyVerdict

# ADAPTER_NAME, TORCH_DTYPES and WEIGHTS_NAME live in psaguard.loading; re-exported here for old imports.
__all__ = ["ADAPTER_NAME", "TORCH_DTYPES", "WEIGHTS_NAME", "GuardAnalysis", "SafetyGuard"]


class SafetyGuard(CategoryMethods, AsyncGuardMethods):
    """Judges (image, prompt) requests with PSA-VLM safety modules on top of a loaded model.

    Build one with :meth:`attach` (fresh modules) or :meth:`from_pretrained` (trained modules); the model
    and processor stay the caller's and are not modified. Thread-safe: classification mutates nothing.
    Custom categories come from :class:`~psaguard.guard_categories.CategoryMethods`, the async forms
    (``aclassify``, ``agenerate``, ``astream``, ...) from :class:`~psaguard.guard_async.AsyncGuardMethods`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        config: SafetyGuardConfig,
        modules: SafetyModules,
        backbone: Backbone | None = None,
        bank: CategoryBank | None = None,
    ) -> None:
        if backbone is None or backbone.model is not model:
            backbone = resolve_backbone(model)
        self.classifier = Classifier(backbone, processor, config, modules, bank)
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
    def attach(
        cls,
        model: torch.nn.Module,
        processor: Any,
        config: SafetyGuardConfig | None = None,
        *,
        dtype: DtypeRequest = None,
    ) -> SafetyGuard:
        """Attach fresh (untrained) safety modules, sized from ``model.config``, to ``model``.

        ``dtype`` (a torch dtype or its name) is the modules' compute dtype; None takes ``config.dtype``, whose
        default ``"auto"`` chooses what the model's device runs fast (:func:`psaguard.dtypes.choose_dtype`).
        """
        backbone = resolve_backbone(model)
        backbone.check_processor(processor)  # before any module is built
        config = (config or SafetyGuardConfig()).model_copy(update={"fingerprint": backbone.fingerprint()})
        return cls(model, processor, config, build_modules(config, backbone, dtype), backbone)

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
        dtype: DtypeRequest = None,
    ) -> SafetyGuard:
        """Load a saved guard (a local directory or a hub repo id) onto ``model``.

        If the guard has a Stage II LoRA adapter (``adapter/``) and ``load_adapter`` is True, the guard's
        model becomes ``PeftModel.from_pretrained(model, <dir>/adapter)``; PEFT injects the adapter into
        ``model`` in place, so pass ``load_adapter=False`` to leave ``model`` untouched.

        The weights must carry their checksum and the config's digest (both written by
        :meth:`save_pretrained`); ``allow_unverified=True`` loads files lacking them (re-saved by another tool).
        A config edited after saving is refused unless ``accept_edited_config=True``; passing ``policy=`` is
        the way to change the policy without editing the file. ``dtype`` is the modules' compute dtype, as in
        :meth:`attach` (saved weights are cast to it).

        Raises :class:`~psaguard.errors.CheckpointMismatchError` when the guard was trained for a different
        base model, and :class:`~psaguard.errors.CheckpointError` for missing, truncated or tampered files.
        """
        return cls(
            *load_guard_parts(
                path,
                model,
                processor,
                policy=policy,
                revision=revision,
                load_adapter=load_adapter,
                allow_unverified=allow_unverified,
                accept_edited_config=accept_edited_config,
                dtype=dtype,
            )
        )

    @classmethod
    def load(
        cls,
        path: str | Path,
        model_path: str | Path,
        *,
        classifier_only: bool = False,
        device: str | torch.device | None = None,
        dtype: DtypeRequest = None,
    ) -> SafetyGuard:
        """The guard saved in ``path`` on the base model at ``model_path`` (a directory or hub id), loaded in the
        dtype ``device`` (default CPU) runs fast unless ``dtype`` says otherwise; with ``classifier_only``, only
        the model's vision tower and embeddings are read (:meth:`from_pretrained_classifier`). Raises
        :class:`ConfigError` when the model cannot be loaded."""
        if classifier_only:
            return cls.from_pretrained_classifier(path, model_path, device=device, dtype=dtype)
        model, processor = load_base_model(model_path, device=device, dtype=dtype)
        return cls.from_pretrained(path, model=model, processor=processor, dtype=dtype)

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
        dtype: DtypeRequest = None,
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
        ``processor`` defaults to the one saved with the base model; ``device`` (default: CPU) places the
        loaded parts, computing in ``dtype`` (a torch dtype or its name), the modules too. The default
        (None or ``"auto"``) is what ``device`` runs fast (:func:`psaguard.dtypes.choose_dtype`): the
        checkpoint's dtype on an accelerator or on a CPU with a native path for it (AVX-512-BF16, AMX),
        float32 on other CPUs, at twice the memory of bfloat16 (see docs/classifier_only.md). A Stage II
        LoRA adapter is not loaded, and a guard whose adapter changes the vision tower or embeddings is
        refused. ``allow_unverified`` and ``accept_edited_config`` are as in :meth:`from_pretrained`.

        Raises :class:`~psaguard.errors.CheckpointMismatchError` when the guard was trained for a different
        base model, :class:`~psaguard.errors.UnsupportedModelError` for a non-LLaVA checkpoint, and
        :class:`~psaguard.errors.CheckpointError` for missing or unreadable files.
        """
        directory, model, processor = load_classifier_model(
            path, model_path, processor, revision=revision, model_revision=model_revision, dtype=dtype, device=device
        )
        return cls.from_pretrained(
            directory,
            model,
            processor,
            policy=policy,
            load_adapter=False,
            allow_unverified=allow_unverified,
            accept_edited_config=accept_edited_config,
            dtype=dtype,
        )

    def save_pretrained(self, path: str | Path) -> Path:
        """Save the config (JSON) and the safety modules (safetensors) to ``path``, atomically."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        metadata = {"format": "pt", CONFIG_DIGEST_KEY: self.config.digest()}
        tensors = {**self.modules.state_dict(), **self.classifier.bank.tensors()}
        save_tensors(path / WEIGHTS_NAME, tensors, metadata=metadata)
        self.config.save(path)
        return path

    def with_policy(self, policy: GuardPolicy) -> SafetyGuard:
        """A guard sharing this one's model and modules but deciding with ``policy``."""
        try:
            policy.validate_against(self.config.taxonomy)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        config = self.config.model_copy(update={"policy": policy})
        return type(self)(self.model, self.processor, config, self.modules, self.backbone, self.classifier.bank)

    @property
    def policy(self) -> GuardPolicy:
        return self.config.policy

    @property
    def compute_dtypes(self) -> dict[str, str]:
        """The dtypes the guard computes in: ``model`` (its input embeddings) and ``modules`` (the safety modules)."""
        modules = next(self.modules.parameters()).dtype
        return {"model": dtype_name(self.backbone.embedding_dtype), "modules": dtype_name(modules)}

    # ------------------------------------------------------------------ classification
    def classify(self, image: ImageInput, prompt: str) -> SafetyVerdict:
        """Judge one request without running the language model."""
        return self.classify_batch([image], [prompt])[0]

    def classify_batch(self, images: Sequence[ImageInput], prompts: Sequence[str]) -> list[SafetyVerdict]:
        """Judge a batch of requests in one forward pass; same verdicts as one by one.

        Probabilities match single :meth:`classify` calls within 1e-6 (a padded batch reorders float32 sums).
        """
        return self.analyze(images, prompts).verdicts

    def classify_requests(
        self, requests: Sequence[GuardRequest], *, on_text_only: TextOnlyAction = "block"
    ) -> list[SafetyVerdict]:
        """Judge whole requests (several images, a conversation) in one forward pass: a request's verdict is
        the most severe of its images'; one without images gets ``on_text_only`` (fail closed by default).

        Build requests with ``GuardRequest.of(images, prompt_or_conversation)``. Guarded generation, the
        LangChain adapters and the server judge through this, so a request gets the same verdict on every path.
        """
        return self.classifier.judge_requests(requests, on_text_only).verdicts

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
        return self.classifier.responses.analyze_responses(images, prompts, responses)

    @property
    def has_response_head(self) -> bool:
        """True when the guard can judge answers (``classify_response``, the streaming monitors)."""
        return self.classifier.has_response_head

    def answer_monitor(self, request: GuardRequest) -> AnswerMonitor:
        """A monitor judging one answer to ``request`` that arrives as text (from a model the guard does not
        run): ``push(chunk)`` returns the text it releases, ``finish()`` the rest (:class:`AnswerMonitor`).

        Raises :class:`~psaguard.errors.ResponseHeadMissingError` for a guard without a response head.
        """
        return AnswerMonitor(self.classifier, request)

    def analyze(self, images: Sequence[ImageInput], prompts: Sequence[str]) -> GuardAnalysis:
        """Judge a batch and keep its vision features for reuse (see :meth:`Classifier.analyze`).

        Requests that cannot be judged follow ``policy.on_error``: 'block' raises the typed error (fail
        closed), 'refuse' and 'allow' give an error verdict with that action.
        """
        return self.classifier.analyze(images, prompts)

    def head_logits(self, features: VisionFeatures, prompts: Sequence[str]) -> HeadLogits:
        """Safety-head logits for already encoded images and their prompts (differentiable)."""
        return self.classifier.head_logits(features, prompts)

    def response_head_logits(
        self, features: VisionFeatures, prompts: Sequence[str], responses: Sequence[str]
    ) -> HeadLogits:
        """Response-head logits for already encoded images, prompts and answers (differentiable; training)."""
        return self.classifier.responses.response_head_logits(features, prompts, responses)

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

    def stream(
        self,
        image: ImagesInput,
        prompt: PromptInput,
        *,
        options: GenerationOptions | None = None,
        **generate_kwargs: Any,
    ) -> GuardedStream:
        """Judge now, then iterate the answer's text chunks (:class:`~psaguard.generation.streaming.GuardedStream`)."""
        return self._generator(options).stream(image, prompt, **generate_kwargs)

    def wrap(self, model: torch.nn.Module | None = None, *, options: GenerationOptions | None = None) -> GuardedModel:
        """A drop-in stand-in for ``model`` (default: the guard's) whose ``generate`` is guarded."""
        return GuardedModel(self.classifier, model, options=options)

    # ------------------------------------------------------------------ helpers
    def _generator(self, options: GenerationOptions | None) -> GuardedGenerator:
        return GuardedGenerator(self.classifier, options)

    def __repr__(self) -> str:
        fingerprint = self.config.fingerprint
        return (
            f"SafetyGuard(family={fingerprint.family if fingerprint else None!r}, "
            f"pooling={self.config.head.pooling!r}, tokens={self.config.tokens.num_tokens}, "
            f"params={sum(p.numel() for p in self.modules.parameters()):,}, dtypes={self.compute_dtypes})"
        )
