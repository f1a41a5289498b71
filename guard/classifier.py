"""The classifier: backbone + safety modules + prompt encoder, from (image, prompt) requests to verdicts.

Everything that judges goes through :class:`Classifier`: ``SafetyGuard.classify``, guarded generation (which
reuses the one vision pass for the answer) and the drop-in wrapper (which encodes the app's own
``pixel_values`` and calls :meth:`Classifier.judge`). It fails closed per ``policy.on_error`` in one place.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch.nn import functional as F

from psaguard.backbones import Backbone, VisionFeatures, resolve_backbone
from psaguard.config import SafetyGuardConfig
from psaguard.errors import (
    CheckpointMismatchError,
    GuardInternalError,
    InvalidImageError,
    InvalidPromptError,
    ResponseHeadMissingError,
)
from psaguard.images import ImageInput, load_image
from psaguard.modules import HeadLogits, SafetyModules
from psaguard.policy import GuardPolicy, decide, decide_response, error_verdict, response_error_verdict
from psaguard.prompts import PromptEncoder
from psaguard.verdict import ResponseVerdict, SafetyVerdict

__all__ = ["Classifier", "GuardAnalysis", "RequestContext"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuardAnalysis:
    """Verdicts of a batch plus the one vision pass they came from (reused by guarded generation).

    ``features`` is None when no image of the batch could be judged.
    """

    verdicts: list[SafetyVerdict]
    features: VisionFeatures | None
    judged: list[int]


@dataclass(frozen=True)
class RequestContext:
    """What the response side reuses of one vision pass: the heads' memory and the request-side verdicts.

    Row ``i`` is image ``i``: ``memory`` its safety features, ``image`` its verdict with no text, ``request``
    its verdict with the prompt (they locate the risk of a harmful answer).
    """

    memory: torch.Tensor
    prompts: list[str]
    image: list[SafetyVerdict]
    request: list[SafetyVerdict]


class Classifier:
    """Judges requests for one model: its backbone, the guard's safety modules, the prompt encoder.

    Stateless between calls and thread-safe (classification mutates nothing).
    """

    def __init__(self, backbone: Backbone, processor: Any, config: SafetyGuardConfig, modules: SafetyModules) -> None:
        backbone.check_processor(processor)  # ProcessorError for a missing processor or one of another family
        self.backbone = backbone
        self.processor = processor
        self.config = config
        self.modules = modules
        self.prompts = PromptEncoder(processor, config.head.max_prompt_tokens, backbone.vocab_size)

    @property
    def model(self) -> torch.nn.Module:
        """The model as given (generation runs through it)."""
        return self.backbone.model

    @property
    def policy(self) -> GuardPolicy:
        return self.config.policy

    def with_config(self, config: SafetyGuardConfig) -> Classifier:
        """The same model and modules deciding with ``config`` (e.g. another policy)."""
        return Classifier(self.backbone, self.processor, config, self.modules)

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
        return Classifier(backbone, self.processor, self.config, self.modules)

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
        if isinstance(images, (str, bytes)) or isinstance(prompts, str):
            raise InvalidPromptError("classify_batch takes sequences of images and prompts; use classify for one")
        if len(images) != len(prompts):
            raise InvalidPromptError(f"got {len(images)} images but {len(prompts)} prompts")
        if requests is not None and len(requests) != len(images):
            raise InvalidPromptError(f"got {len(requests)} request indices for {len(images)} images")
        start = time.perf_counter()
        loaded, errors = self._load(images, prompts)
        verdicts: dict[int, SafetyVerdict] = {}
        features = None
        if loaded:
            try:
                grouping = None if requests is None else _group_sizes([requests[index] for index, _, _ in loaded])
                features, level_probs, type_probs = self._probabilities(
                    [image for _, image, _ in loaded], [prompt for _, _, prompt in loaded], grouping
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

    # ------------------------------------------------------------------ judging answers
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

    def analyze_responses(
        self, images: Sequence[ImageInput], prompts: Sequence[str], responses: Sequence[str]
    ) -> list[ResponseVerdict]:
        """Judge answers to (image, prompt) requests: one vision pass, then the request and response heads.

        No text is generated: the response head reads the pooled safety features with the prompt followed
        by the answer as its query. Bad inputs and internal failures follow ``policy.on_error`` as in
        :meth:`analyze` ('refuse' replaces the answer). Raises :class:`ResponseHeadMissingError` for a guard
        without a response head.
        """
        self.require_response_head()
        if isinstance(responses, str):
            raise InvalidPromptError("classify_response_batch takes a sequence of responses; use classify_response")
        if isinstance(images, (str, bytes)) or isinstance(prompts, str) or len(images) != len(prompts):
            raise InvalidPromptError("give sequences of images and prompts of the same length")
        if len(responses) != len(prompts):
            raise InvalidPromptError(f"got {len(prompts)} prompts but {len(responses)} responses")
        start = time.perf_counter()
        loaded, errors = self._load(images, prompts, responses)
        verdicts: dict[int, ResponseVerdict] = {}
        if loaded:
            try:
                with torch.inference_mode():
                    features = self.backbone.encode_images(**self.preprocess([image for _, image, _ in loaded]))
                    context = self.request_context(features, [prompt for _, _, prompt in loaded], start)
                    judged = self.judge_responses(context, [responses[index] for index, _, _ in loaded], start)
            except GuardInternalError:
                raise  # non-finite scores under on_error='block'
            except RuntimeError as err:
                internal = _internal_error(err)
                if self.policy.on_error == "block":
                    raise internal from err
                errors.update({index: str(internal) for index, _, _ in loaded})
            else:
                verdicts = {index: verdict for (index, _, _), verdict in zip(loaded, judged)}
        for index, reason in errors.items():
            verdicts[index] = response_error_verdict(reason, self.policy, self.config.taxonomy)
        return [verdicts[i] for i in range(len(prompts))]

    def request_context(self, features: VisionFeatures, prompts: Sequence[str], start: float) -> RequestContext:
        """The memory of ``features`` (one row per prompt) and each row's verdicts with no text and with its prompt.

        Computed once per vision pass; :meth:`judge_responses` then runs only the response head.
        """
        with torch.inference_mode():
            device = self.modules.head_tokens.device
            memory = self.modules.memory(features.patches.to(device))
            prompts = list(prompts)
            ids, mask = self.prompts.encode([*prompts, *([""] * len(prompts))])
            query = self.backbone.embed_tokens(ids).to(device)
            logits = self.modules.request_logits(memory.repeat(2, 1, 1), query, mask.to(device))
        rows = list(range(2 * len(prompts)))
        decided = self._decide_rows(*self._calibrated(logits), rows, start)
        count = len(prompts)
        return RequestContext(
            memory=memory,
            prompts=prompts,
            request=[decided[i] for i in range(count)],
            image=[decided[count + i] for i in range(count)],
        )

    def judge_responses(
        self,
        context: RequestContext,
        responses: Sequence[str],
        start: float,
        rows: Sequence[int] | None = None,
        tokens_judged: int | None = None,
    ) -> list[ResponseVerdict]:
        """Verdicts for ``responses`` to the requests of ``context`` (its rows ``rows``, default all, in order).

        Runs the response head only (the streaming monitor calls this every few tokens). Non-finite scores
        follow ``policy.on_error``.
        """
        rows = list(range(len(context.prompts))) if rows is None else list(rows)
        self.require_response_head()
        with torch.inference_mode():
            device = self.modules.head_tokens.device
            ids, mask = self.prompts.encode_pairs([context.prompts[r] for r in rows], responses)
            query = self.backbone.embed_tokens(ids).to(device)
            logits = self.modules.response_logits(context.memory[rows], query, mask.to(device))
        head = self.config.head
        level_probs = F.softmax(logits.level.float() / head.response_level_temperature, dim=-1)
        type_probs = F.softmax(logits.type.float() / head.response_type_temperature, dim=-1)
        elapsed = (time.perf_counter() - start) * 1000.0
        verdicts = []
        for position, row in enumerate(rows):
            if not (level_probs[position].isfinite().all() and type_probs[position].isfinite().all()):
                err = GuardInternalError(f"answer {position}: the response head produced non-finite scores")
                if self.policy.on_error == "block":
                    raise err
                verdicts.append(response_error_verdict(str(err), self.policy, self.config.taxonomy, tokens_judged))
                continue
            verdicts.append(
                decide_response(
                    level_probs[position].tolist(),
                    type_probs[position].tolist(),
                    self.policy.response,
                    self.config.taxonomy,
                    image=context.image[row],
                    request=context.request[row],
                    tokens_judged=tokens_judged,
                    latency_ms=elapsed,
                )
            )
        return verdicts

    def judge(self, features: VisionFeatures, prompts: Sequence[str], start: float) -> list[SafetyVerdict]:
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

    def head_logits(self, features: VisionFeatures, prompts: Sequence[str]) -> HeadLogits:
        """Safety-head logits for already encoded images and their prompts (differentiable)."""
        ids, mask = self.prompts.encode(prompts)
        device = self.modules.head_tokens.device
        query = self.backbone.embed_tokens(ids).to(device)
        return self.modules(features.patches.to(device), query, mask.to(device))

    def response_head_logits(
        self, features: VisionFeatures, prompts: Sequence[str], responses: Sequence[str]
    ) -> HeadLogits:
        """Response-head logits for already encoded images, their prompts and answers (differentiable)."""
        ids, mask = self.prompts.encode_pairs(prompts, responses)
        device = self.modules.head_tokens.device
        query = self.backbone.embed_tokens(ids).to(device)
        memory = self.modules.memory(features.patches.to(device))
        return self.modules.response_logits(memory, query, mask.to(device))

    # ------------------------------------------------------------------ helpers
    def _load(
        self, images: Sequence[ImageInput], prompts: Sequence[str], responses: Sequence[str] | None = None
    ) -> tuple[list[tuple[int, Image.Image, str]], dict[int, str]]:
        """Decode and validate each request alone: ``(loaded, errors)``; 'block' raises the first bad input."""
        loaded, errors = [], {}
        for index, (image, prompt) in enumerate(zip(images, prompts)):
            try:
                self.prompts.token_ids(prompt)  # validates fully, so a bad prompt fails alone
                if responses is not None:
                    self.prompts.pair_ids(prompt, responses[index])
                decoded = load_image(image, self.config.max_image_pixels, formats=self.config.image_formats)
                loaded.append((index, decoded, prompt))
            except (InvalidImageError, InvalidPromptError) as err:
                if self.policy.on_error == "block":
                    raise type(err)(f"request {index}: {err}") from err
                errors[index] = f"{type(err).__name__}: {err}"
        return loaded, errors

    def _probabilities(
        self, images: Sequence[Any], prompts: Sequence[str], grouping: Sequence[int] | None = None
    ) -> tuple[VisionFeatures, torch.Tensor, torch.Tensor]:
        """Forward pass and calibrated probabilities; a RuntimeError inside becomes GuardInternalError."""
        try:
            features, logits = self._forward(images, prompts, grouping)
        except RuntimeError as err:
            raise _internal_error(err) from err
        return (features, *self._calibrated(logits))

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
    ) -> tuple[VisionFeatures, HeadLogits]:
        features = self.backbone.encode_images(**self.preprocess(images, grouping))
        return features, self.head_logits(features, prompts)

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


def _group_sizes(requests: Sequence[int]) -> list[int]:
    """Sizes of the runs of equal request indices: ``[0, 0, 1, 2, 2] -> [2, 1, 2]``."""
    sizes: list[int] = []
    for position, request in enumerate(requests):
        if position and request == requests[position - 1]:
            sizes[-1] += 1
        else:
            sizes.append(1)
    return sizes


def _internal_error(err: RuntimeError) -> GuardInternalError:
    # torch raises RuntimeError (and OutOfMemoryError, a subclass) for device, memory and kernel failures
    logger.warning("guard forward pass failed: %s: %s", type(err).__name__, err)
    return GuardInternalError(f"the guard failed while judging: {type(err).__name__}: {err}")
