"""The response side of the classifier: judging answers to requests with the response head.

:class:`ResponseJudge` works over a :class:`~psaguard.classifier.Classifier` (its vision pass, input checks and
request-side decisions) and is reached as ``classifier.responses``: ``classify_response``
(:meth:`ResponseJudge.analyze_responses`), the streaming monitors (:meth:`ResponseJudge.request_context` /
:meth:`ResponseJudge.response_context`, then :meth:`ResponseJudge.judge_responses` every few tokens) and
training (:meth:`ResponseJudge.response_head_logits`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch.nn import functional as F

from psaguard.backbones import VisionFeatures
from psaguard.errors import GuardInternalError, InvalidImageError, InvalidPromptError, internal_error
from psaguard.images.decode import ImageInput, check_image_count
from psaguard.modules import HeadLogits
from psaguard.request import GuardRequest
from psaguard.responses.cache import AnswerCache
from psaguard.responses.policy import decide_response, response_error_verdict
from psaguard.verdict import ResponseVerdict, SafetyVerdict

if TYPE_CHECKING:  # the classifier builds its ResponseJudge; this module needs its type only
    from psaguard.classifier import Classifier

__all__ = ["RequestContext", "ResponseJudge"]


@dataclass(frozen=True)
class RequestContext:
    """What the response side reuses of one vision pass: the heads' memory and the request-side verdicts.

    Row ``i`` is image ``i``: ``memory`` its safety features, ``image`` its verdict with no text, ``request``
    its verdict with the prompt (they locate the risk of a harmful answer). ``answers``, when set, judges the
    answers incrementally (the streaming monitor judges the same answers again and again as they grow).
    """

    memory: torch.Tensor
    prompts: list[str]
    image: list[SafetyVerdict]
    request: list[SafetyVerdict]
    answers: AnswerCache | None = None


class ResponseJudge:
    """Judges answers for one :class:`~psaguard.classifier.Classifier` (``classifier.responses``): the request's
    one vision pass, then the response head. Stateless between calls, like the classifier."""

    def __init__(self, classifier: Classifier) -> None:
        self.classifier = classifier

    def analyze_responses(
        self, images: Sequence[ImageInput], prompts: Sequence[str], responses: Sequence[str]
    ) -> list[ResponseVerdict]:
        """Judge answers to (image, prompt) requests: one vision pass, then the request and response heads.

        No text is generated: the response head reads the pooled safety features with the prompt followed
        by the answer as its query. Bad inputs and internal failures follow ``policy.on_error`` as in
        :meth:`~psaguard.classifier.Classifier.analyze` ('refuse' replaces the answer). Raises
        :class:`ResponseHeadMissingError` for a guard without a response head.
        """
        classifier = self.classifier
        classifier.require_response_head()
        _check_response_batch(images, prompts, responses)
        start = time.perf_counter()
        loaded, errors = classifier.load_inputs(images, prompts, responses)
        verdicts = self._judge_loaded(loaded, responses, errors, start) if loaded else {}
        for index, reason in errors.items():
            verdicts[index] = response_error_verdict(
                reason,
                classifier.policy.on_error,
                classifier.policy.response,
                classifier.config.taxonomy,
            )
        return [verdicts[i] for i in range(len(prompts))]

    def _judge_loaded(
        self,
        loaded: Sequence[tuple[int, Image.Image, str]],
        responses: Sequence[str],
        errors: dict[int, str],
        start: float,
    ) -> dict[int, ResponseVerdict]:
        """The verdicts of the ``loaded`` requests' answers, in one vision pass; a failed pass is recorded in
        ``errors`` for each of them (raised under on_error='block', as non-finite scores are)."""
        classifier = self.classifier
        try:
            with torch.inference_mode():
                features = classifier.backbone.encode_images(**classifier.preprocess([image for _, image, _ in loaded]))
                context = self.request_context(features, [prompt for _, _, prompt in loaded], start)
                judged = self.judge_responses(context, [responses[index] for index, _, _ in loaded], start)
        except GuardInternalError:
            raise  # non-finite scores under on_error='block'
        except RuntimeError as err:
            internal = internal_error(err)
            if classifier.policy.on_error == "block":
                raise internal from err
            errors.update({index: str(internal) for index, _, _ in loaded})
            return {}
        return {index: verdict for (index, _, _), verdict in zip(loaded, judged)}

    def response_context(self, request: GuardRequest) -> RequestContext:
        """The context that judges answers to ``request``: one vision pass over its images (preprocessed
        together, as :meth:`~psaguard.classifier.Classifier.judge_requests` does), one row per image, each with
        the request's judged text.

        Raises :class:`ResponseHeadMissingError`, :class:`InvalidImageError` for a request without images (an
        answer is judged with the images it was given for) or an unreadable one, :class:`InvalidPromptError`
        for a bad prompt, :class:`GuardInternalError` when the vision pass fails; the caller applies
        ``policy.on_error`` (:class:`~psaguard.generation.monitor.AnswerMonitor`).
        """
        classifier = self.classifier
        classifier.require_response_head()
        count = len(request.images)
        check_image_count(count, classifier.config.max_images_per_request, "the request")
        if not count:
            raise InvalidImageError("the request holds no image, so its answer cannot be judged")
        start = time.perf_counter()
        prompts = [request.prompt] * count
        loaded, _ = classifier.load_inputs(request.images, prompts, strict=True)
        try:
            with torch.inference_mode():
                features = classifier.backbone.encode_images(
                    **classifier.preprocess([image for _, image, _ in loaded], [count])
                )
            return self.request_context(features, prompts, start, incremental=True)
        except GuardInternalError:
            raise
        except RuntimeError as err:
            raise internal_error(err) from err

    def request_context(
        self,
        features: VisionFeatures,
        prompts: Sequence[str],
        start: float,
        *,
        incremental: bool = False,
        memory: torch.Tensor | None = None,
    ) -> RequestContext:
        """The memory of ``features`` (one row per prompt) and each row's verdicts with no text and with its prompt.

        Computed once per vision pass (``memory``, when given, is that of ``features`` already computed by the
        request's judgement: the safety projector does not run again); :meth:`judge_responses` then runs only
        the response head, and with ``incremental`` (a guard with a response head) attends only the tokens it
        has not seen in an earlier judgement of the context (:class:`~psaguard.responses.cache.AnswerCache`).
        """
        classifier = self.classifier
        with torch.inference_mode():
            device = classifier.modules.head_tokens.device
            if memory is None:
                memory = classifier.modules.memory(features.patches.to(device))
            prompts = list(prompts)
            ids, mask = classifier.prompts.encode([*prompts, *([""] * len(prompts))])
            query = classifier.backbone.embed_tokens(ids).to(device)
            logits = classifier.modules.request_logits(memory.repeat(2, 1, 1), query, mask.to(device))
        rows = list(range(2 * len(prompts)))
        decided = classifier.decide_rows(*classifier.calibrated(logits, features.patches.repeat(2, 1, 1)), rows, start)
        count = len(prompts)
        answers = None
        if incremental and classifier.modules.response_head is not None:
            prompt_parts = [classifier.prompts.prompt_part(prompt) for prompt in prompts]
            answers = AnswerCache(classifier.modules.response_head, memory, prompt_parts, classifier.embed_on_head)
        return RequestContext(
            memory=memory,
            prompts=prompts,
            request=[decided[i] for i in range(count)],
            image=[decided[count + i] for i in range(count)],
            answers=answers,
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

        Runs the response head only (the streaming monitor calls this every few tokens), through the
        context's :class:`~psaguard.responses.cache.AnswerCache` when it has one. Non-finite scores follow
        ``policy.on_error``.
        """
        classifier = self.classifier
        rows = list(range(len(context.prompts))) if rows is None else list(rows)
        classifier.require_response_head()
        prompts = [context.prompts[r] for r in rows]
        if context.answers is not None:
            if len(prompts) != len(responses):
                raise InvalidPromptError(f"got {len(prompts)} prompts but {len(responses)} responses")
            parts = context.answers.prompt_ids
            pairs = [classifier.prompts.answer_ids(parts[row], response) for row, response in zip(rows, responses)]
            logits = context.answers.logits(rows, pairs)
        else:
            with torch.inference_mode():
                ids, mask = classifier.prompts.encode_pairs(prompts, responses)
                device = classifier.modules.head_tokens.device
                logits = classifier.modules.response_logits(
                    context.memory[rows], classifier.embed_on_head(ids), mask.to(device)
                )
        head = classifier.config.head
        level_probs = F.softmax(logits.level.float() / head.response_level_temperature, dim=-1)
        type_probs = F.softmax(logits.type.float() / head.response_type_temperature, dim=-1)
        elapsed = (time.perf_counter() - start) * 1000.0
        finite = (level_probs.isfinite().all(-1) & type_probs.isfinite().all(-1)).tolist()
        level_rows, type_rows = level_probs.tolist(), type_probs.tolist()  # one copy each, not one per row
        verdicts = []
        for position, row in enumerate(rows):
            if not finite[position]:
                err = GuardInternalError(f"answer {position}: the response head produced non-finite scores")
                if classifier.policy.on_error == "block":
                    raise err
                verdicts.append(
                    response_error_verdict(
                        str(err),
                        classifier.policy.on_error,
                        classifier.policy.response,
                        classifier.config.taxonomy,
                        tokens_judged,
                    )
                )
                continue
            verdicts.append(
                decide_response(
                    level_rows[position],
                    type_rows[position],
                    classifier.policy.response,
                    classifier.config.taxonomy,
                    image=context.image[row],
                    request=context.request[row],
                    tokens_judged=tokens_judged,
                    latency_ms=elapsed,
                )
            )
        return verdicts

    def response_head_logits(
        self, features: VisionFeatures, prompts: Sequence[str], responses: Sequence[str]
    ) -> HeadLogits:
        """Response-head logits for already encoded images, their prompts and answers (differentiable)."""
        classifier = self.classifier
        ids, mask = classifier.prompts.encode_pairs(prompts, responses)
        device = classifier.modules.head_tokens.device
        query = classifier.backbone.embed_tokens(ids).to(device)
        memory = classifier.modules.memory(features.patches.to(device))
        return classifier.modules.response_logits(memory, query, mask.to(device))


def _check_response_batch(images: Sequence[ImageInput], prompts: Sequence[str], responses: Sequence[str]) -> None:
    """Sequences (not one response, image or prompt) of equal length."""
    if isinstance(responses, str):
        raise InvalidPromptError("classify_response_batch takes a sequence of responses; use classify_response")
    if isinstance(images, (str, bytes)) or isinstance(prompts, str) or len(images) != len(prompts):
        raise InvalidPromptError("give sequences of images and prompts of the same length")
    if len(responses) != len(prompts):
        raise InvalidPromptError(f"got {len(prompts)} prompts but {len(responses)} responses")
