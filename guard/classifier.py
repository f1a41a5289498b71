"""The classifier: backbone + safety modules + prompt encoder, from (image, prompt) requests to verdicts.

Everything that judges goes through :class:`Classifier`: ``SafetyGuard.classify``, guarded generation (which
reuses the one vision pass for the answer) and the drop-in wrapper (which encodes the app's own
``pixel_values`` and calls :meth:`Classifier.judge`). It fails closed per ``policy.on_error`` in one place.
Answers are judged by its response side, ``classifier.responses`` (:mod:`psaguard.responses.judge`); custom
categories are added and removed by :mod:`psaguard.categories.fitting`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from PIL import Image
from torch.nn import functional as F

from psaguard.backbones import Backbone, VisionFeatures, resolve_backbone
from psaguard.categories.bank import CategoryBank, category_features, category_width
from psaguard.config import SafetyGuardConfig
from psaguard.errors import (
    CategoryError,
    CheckpointMismatchError,
    GuardInternalError,
    InvalidImageError,
    InvalidPromptError,
    ResponseHeadMissingError,
    internal_error,
)
from psaguard.images.decode import ImageInput, load_image
from psaguard.modules import HeadLogits, SafetyModules
from psaguard.policy import (
    GuardPolicy,
    TextOnlyAction,
    decide,
    error_verdict,
    text_only_verdict,
)
from psaguard.prompts import PromptEncoder
from psaguard.request import GuardRequest, RequestJudgement
from psaguard.request_rows import check_batch, check_request_sizes, flat_images, fold_verdicts, grouping_of
from psaguard.responses.judge import RequestContext, ResponseJudge
from psaguard.verdict import SafetyVerdict

# RequestContext lives in psaguard.responses.judge; re-exported here for old imports.
__all__ = ["Classifier", "GuardAnalysis", "RequestContext"]


@dataclass(frozen=True)
class GuardAnalysis:
    """Verdicts of a batch plus the one vision pass they came from (reused by guarded generation).

    ``features`` is None when no image of the batch could be judged; ``logits`` are the raw (temperature 1)
    head logits the verdicts came from, one row per judged request, and ``memory`` the safety heads' keys and
    values of the same rows (what the response side reuses); both None with ``features``.
    """

    verdicts: list[SafetyVerdict]
    features: VisionFeatures | None
    judged: list[int]
    logits: HeadLogits | None = None
    memory: torch.Tensor | None = None


class Classifier:
    """Judges requests for one model: its backbone, the guard's safety modules, the prompt encoder, and the
    bank of custom categories (judged from the head's pooled features in the same pass).

    Stateless between calls and thread-safe (classification mutates nothing).
    """

    def __init__(
        self,
        backbone: Backbone,
        processor: Any,
        config: SafetyGuardConfig,
        modules: SafetyModules,
        bank: CategoryBank | None = None,
    ) -> None:
        backbone.check_processor(processor)  # ProcessorError for a missing processor or one of another family
        self.backbone = backbone
        self.processor = processor
        self.config = config
        self.modules = modules
        width = category_width(backbone.text_hidden_size, backbone.vision_hidden_size)
        self.bank = bank if bank is not None else CategoryBank.empty(width)
        if self.bank.categories != config.categories:
            raise CategoryError(
                f"the category bank holds {self.bank.codes}, the config {[c.code for c in config.categories]}"
            )
        self.prompts = PromptEncoder(processor, config.head.max_prompt_tokens, backbone.vocab_size)
        self.responses = ResponseJudge(self)
        """The response side: judging answers to requests (:class:`~psaguard.responses.judge.ResponseJudge`)."""

    @property
    def model(self) -> torch.nn.Module:
        """The model as given (generation runs through it)."""
        return self.backbone.model

    @property
    def policy(self) -> GuardPolicy:
        return self.config.policy

    def with_config(self, config: SafetyGuardConfig) -> Classifier:
        """The same model, modules and categories deciding with ``config`` (e.g. another policy)."""
        return Classifier(self.backbone, self.processor, config, self.modules, self.bank)

    def with_bank(self, bank: CategoryBank) -> Classifier:
        """The same model and modules with the custom categories of ``bank`` (recorded in the config too)."""
        config = self.config.model_copy(update={"categories": bank.categories})
        return Classifier(self.backbone, self.processor, config, self.modules, bank)

    def for_model(self, model: torch.nn.Module) -> Classifier:
        """The same safety modules on another instance of the same architecture (e.g. the model in 4-bit).

        Raises :class:`CheckpointMismatchError` when ``model`` differs from the one the modules were made for.
        """
        if model is self.backbone.model:
            return self
        backbone = resolve_backbone(model)
        if self.config.fingerprint is not None:
            self.config.fingerprint.check(backbone.fingerprint())
        elif backbone.fingerprint() != self.backbone.fingerprint():
            raise CheckpointMismatchError("the model differs from the guard's model")
        return Classifier(backbone, self.processor, self.config, self.modules, self.bank)

    # ------------------------------------------------------------------ judging
    def analyze(
        self,
        images: Sequence[ImageInput],
        prompts: Sequence[str],
        requests: Sequence[int] | None = None,
    ) -> GuardAnalysis:
        """Judge a batch and keep its vision features for reuse.

        Requests that cannot be judged follow ``policy.on_error``: 'block' raises the typed error (fail
        closed), 'refuse' and 'allow' give an error verdict with that action. That covers bad inputs
        (:class:`InvalidImageError`, :class:`InvalidPromptError`) and internal failures: a ``RuntimeError``
        in the forward pass (device errors, out of memory) or non-finite scores (a tampered or diverged
        head), raised as :class:`GuardInternalError`. ``judged`` lists the requests whose rows are in
        ``features``, in order. ``requests`` (guarded generation) says which request each image belongs
        to, so the backbone preprocesses the images of a multi-image request together.
        """
        check_batch(images, prompts, requests)
        start = time.perf_counter()
        loaded, errors = self.load_inputs(images, prompts)
        judged = [index for index, _, _ in loaded]
        verdicts: dict[int, SafetyVerdict] = {}
        features = logits = memory = None
        if loaded:
            try:
                features, memory, logits, level_probs, type_probs, custom_probs = self._probabilities(
                    [image for _, image, _ in loaded],
                    [prompt for _, _, prompt in loaded],
                    grouping_of(requests, judged),
                )
            except GuardInternalError as err:
                self._fail_judged(err, judged, errors)
                judged, memory = [], None
            else:
                verdicts = self.decide_rows(level_probs, type_probs, custom_probs, judged, start)
        for index, reason in errors.items():
            verdicts[index] = error_verdict(reason, self.policy, self.config.taxonomy)
        return GuardAnalysis(
            verdicts=[verdicts[i] for i in range(len(prompts))],
            features=features,
            judged=judged,
            logits=logits,
            memory=memory,
        )

    def judge_requests(self, requests: Sequence[GuardRequest], on_text_only: TextOnlyAction) -> RequestJudgement:
        """Judge whole requests in one vision pass: each image with its request's text, the images of a
        request preprocessed together; the most severe image verdict decides a request, and a request without
        images gets ``on_text_only``. Failing closed as :meth:`analyze` does; a request holding more than
        ``config.max_images_per_request`` images raises :class:`InvalidInputError` before any image is read."""
        check_request_sizes(requests, self.config.max_images_per_request)
        analysis = self.analyze(*flat_images(requests))
        text_only = partial(text_only_verdict, on_text_only, self.policy, self.config.taxonomy)
        verdicts, image_verdicts, rows = fold_verdicts(requests, analysis.verdicts, analysis.judged, text_only)
        return RequestJudgement(verdicts, image_verdicts, rows, analysis.features, analysis.memory)

    # ------------------------------------------------------------------ the response side (psaguard.responses.judge)
    @property
    def has_response_head(self) -> bool:
        """True when the guard can judge answers (its modules have a response head)."""
        return self.modules.response_head is not None

    def require_response_head(self) -> None:
        """Raise :class:`ResponseHeadMissingError` unless the guard has a response head."""
        if not self.has_response_head:
            raise ResponseHeadMissingError(
                "this guard has no response head (saved before response checking existed, or built with "
                "head.response_head=False); retrain it with response labels (docs/responses.md) to check answers"
            )

    def judge(self, features: VisionFeatures, prompts: Sequence[str], start: float) -> list[SafetyVerdict]:
        """Verdicts for already encoded images (one per prompt), failing closed exactly like :meth:`analyze`.

        For callers that ran the vision tower themselves (the wrapped model); ``start`` is the
        ``time.perf_counter()`` the latency is measured from.
        """
        return self.judge_encoded(features, prompts, start).verdicts

    def judge_encoded(self, features: VisionFeatures, prompts: Sequence[str], start: float) -> GuardAnalysis:
        """:meth:`judge`, keeping the heads' memory of ``features`` for the response side (None, and no row
        judged, when the forward pass failed under a lenient ``on_error``)."""
        try:
            with torch.inference_mode():
                memory, logits = self._memory_and_logits(features, prompts)
        except RuntimeError as err:
            internal = internal_error(err)
            if self.policy.on_error == "block":
                raise internal from err
            failed = [error_verdict(str(internal), self.policy, self.config.taxonomy) for _ in prompts]
            return GuardAnalysis(verdicts=failed, features=features, judged=[])
        rows = list(range(len(prompts)))
        verdicts = self.decide_rows(*self.calibrated(logits, features.patches), rows, start)
        return GuardAnalysis(verdicts=[verdicts[i] for i in rows], features=features, judged=rows, memory=memory)

    def head_logits(self, features: VisionFeatures, prompts: Sequence[str]) -> HeadLogits:
        """Safety-head logits for already encoded images and their prompts (differentiable)."""
        ids, mask = self.prompts.encode(prompts)
        device = self.modules.head_tokens.device
        query = self.backbone.embed_tokens(ids).to(device)
        return self.modules(features.patches.to(device), query, mask.to(device))

    def category_features(
        self, images: Sequence[ImageInput], prompts: Sequence[str], batch_size: int = 16
    ) -> torch.Tensor:
        """``(N, W)`` :func:`~psaguard.categories.category_features` of (image, prompt) pairs: what custom
        categories are fitted on and read.

        Bad inputs raise their typed error whatever ``policy.on_error`` says (this configures the guard, it
        does not judge a request); a failing forward pass raises :class:`GuardInternalError`.
        """
        if len(images) != len(prompts):
            raise InvalidPromptError(f"got {len(images)} images but {len(prompts)} prompts")
        loaded = [image for _, image, _ in self.load_inputs(images, prompts, strict=True, what="example")[0]]
        rows = []
        for start in range(0, len(loaded), batch_size):
            try:
                batch = slice(start, start + batch_size)
                features, _, logits = self._forward(loaded[batch], prompts[batch])
            except RuntimeError as err:
                raise internal_error(err) from err
            rows.append(_category_input(logits, features.patches).cpu())
        return torch.cat(rows) if rows else torch.zeros(0, self.bank.dim)

    def embed_on_head(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of token ``ids``, on the safety modules' device."""
        return self.backbone.embed_tokens(ids).to(self.modules.head_tokens.device)

    def load_inputs(
        self,
        images: Sequence[ImageInput],
        prompts: Sequence[str],
        responses: Sequence[str] | None = None,
        *,
        strict: bool = False,
        what: str = "request",
    ) -> tuple[list[tuple[int, Image.Image, str]], dict[int, str]]:
        """Decode and validate each ``what`` alone: ``(loaded, errors)``. The first bad input raises its typed
        error under ``on_error='block'``, or whatever the policy says when ``strict``."""
        loaded, errors = [], {}
        for index, (image, prompt) in enumerate(zip(images, prompts)):
            try:
                self.prompts.token_ids(prompt)  # validates fully, so a bad prompt fails alone
                if responses is not None:
                    self.prompts.pair_ids(prompt, responses[index])
                decoded = load_image(image, self.config.max_image_pixels, formats=self.config.image_formats)
                loaded.append((index, decoded, prompt))
            except (InvalidImageError, InvalidPromptError) as err:
                if strict or self.policy.on_error == "block":
                    raise type(err)(f"{what} {index}: {err}") from err
                errors[index] = f"{type(err).__name__}: {err}"
        return loaded, errors

    def _fail_judged(self, err: GuardInternalError, indices: Sequence[int], errors: dict[int, str]) -> None:
        """Fail closed on ``err`` (raise it) under on_error='block', else record it as the error of ``indices``."""
        if self.policy.on_error == "block":
            raise err
        errors.update(dict.fromkeys(indices, str(err)))

    def _probabilities(
        self, images: Sequence[Any], prompts: Sequence[str], grouping: Sequence[int] | None = None
    ) -> tuple[VisionFeatures, torch.Tensor, HeadLogits, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forward pass (features, the heads' memory, raw logits) and calibrated probabilities; a RuntimeError
        inside becomes GuardInternalError."""
        try:
            features, memory, logits = self._forward(images, prompts, grouping)
        except RuntimeError as err:
            raise internal_error(err) from err
        return (features, memory, logits, *self.calibrated(logits, features.patches))

    def preprocess(
        self, images: Sequence[Image.Image], grouping: Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """The pixel inputs the guard judges, and the model then sees, for decoded RGB ``images``.

        The images are fitted to the vision budget (``config.max_vision_patches``), then preprocessed by the
        family, per request when ``grouping`` counts the images of each request in order.
        """
        images = self.backbone.fit_vision_budget(images, self.config.max_vision_patches)
        if grouping is None:
            return self.backbone.preprocess(self.processor, images)
        return self.backbone.preprocess_requests(self.processor, images, grouping)

    @torch.inference_mode()
    def _forward(
        self, images: Sequence[Any], prompts: Sequence[str], grouping: Sequence[int] | None = None
    ) -> tuple[VisionFeatures, torch.Tensor, HeadLogits]:
        """The vision pass, the heads' memory of it, and the request head's logits (what :meth:`head_logits`
        gives, with the memory kept for the response side)."""
        features = self.backbone.encode_images(**self.preprocess(images, grouping))
        return (features, *self._memory_and_logits(features, prompts))

    def _memory_and_logits(self, features: VisionFeatures, prompts: Sequence[str]) -> tuple[torch.Tensor, HeadLogits]:
        """The heads' memory of ``features`` and the request head's logits on it (:meth:`head_logits`' values)."""
        ids, mask = self.prompts.encode(prompts)
        memory = self.modules.memory(features.patches.to(self.modules.head_tokens.device))
        return memory, self.modules.request_logits(memory, self.embed_on_head(ids), mask.to(memory.device))

    def calibrated(self, logits: HeadLogits, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Level, type and custom-category probabilities (the categories also read the vision ``patches``); the
        last is (B, 0) for a guard without categories."""
        level_probs = F.softmax(logits.level.float() / self.config.head.level_temperature, dim=-1)
        type_probs = F.softmax(logits.type.float() / self.config.head.type_temperature, dim=-1)
        if not self.bank.categories:
            return level_probs, type_probs, level_probs.new_zeros(len(level_probs), 0)
        return level_probs, type_probs, self.bank.probabilities(_category_input(logits, patches))

    def decide_rows(
        self,
        level_probs: torch.Tensor,
        type_probs: torch.Tensor,
        custom_probs: torch.Tensor,
        indices: Sequence[int],
        start: float,
    ) -> dict[int, SafetyVerdict]:
        """Row ``r`` of the probabilities decides request ``indices[r]``; non-finite rows follow on_error.

        NaN scores (a tampered or diverged head) must never decide: NaN fails every threshold, which reads
        as level 0, i.e. 'allow'.
        """
        elapsed = (time.perf_counter() - start) * 1000.0
        verdicts: dict[int, SafetyVerdict] = {}
        for row, index in enumerate(indices):
            rows = (level_probs[row], type_probs[row], custom_probs[row])
            if not all(bool(probs.isfinite().all()) for probs in rows):
                err = GuardInternalError(f"request {index}: the safety head produced non-finite scores")
                if self.policy.on_error == "block":
                    raise err
                verdicts[index] = error_verdict(str(err), self.policy, self.config.taxonomy)
                continue
            verdicts[index] = decide(
                level_probs[row].tolist(),
                type_probs[row].tolist(),
                self.policy,
                self.config.taxonomy,
                elapsed,
                categories=self.bank.categories,
                custom_probs=custom_probs[row].tolist(),
            )
        return verdicts


def _category_input(logits: HeadLogits, patches: torch.Tensor) -> torch.Tensor:
    if logits.pooled is None or logits.prompt is None:
        raise GuardInternalError("the safety head returned no pooled features, so custom categories cannot be judged")
    return category_features(logits.pooled, logits.prompt, patches.to(logits.pooled.device))
