"""One request's verdict: its images decoded and judged as one request in the shared batcher (the classifier's
request judge applies the worst-verdict and text-only rules); one answer's verdict: judged with each of its
request's images by the response head, the worst deciding (:func:`psaguard.responses.policy.worst_response`)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from PIL import Image

from psaguard.errors import ResponseHeadMissingError
from psaguard.guard import SafetyGuard
from psaguard.policy import text_only_verdict
from psaguard.request import GuardRequest
from psaguard.responses.policy import worst_response
from psaguard.serving.admission import Ticket
from psaguard.serving.batching import DynamicBatcher
from psaguard.serving.config import ServeConfig
from psaguard.serving.inputs import ImageLoader
from psaguard.serving.metrics import ServeMetrics
from psaguard.serving.protocol import ImageUrl
from psaguard.verdict import ResponseVerdict, SafetyVerdict

__all__ = ["Judge", "missing_head_error"]


def missing_head_error() -> ResponseHeadMissingError:
    """The error of a request whose answer must be judged by a guard without a response head (fail closed)."""
    return ResponseHeadMissingError(
        "this server checks answers (check_answers=True) but its guard has no response head; retrain the guard "
        "with response labels (docs/responses.md), or serve with check_answers=False (--no-answer-checks) to "
        "pass answers unjudged"
    )


class Judge:
    """Judges requests for the moderation endpoint and the chats: a request's images with its text, as one
    request in the shared batcher; a request without images follows ``on_text_only``."""

    def __init__(
        self,
        guard: SafetyGuard,
        config: ServeConfig,
        batcher: DynamicBatcher,
        loader: ImageLoader,
        metrics: ServeMetrics,
    ) -> None:
        self.guard = guard
        self.config = config
        self.batcher = batcher
        self.loader = loader
        self.metrics = metrics

    async def load_images(self, refs: Sequence[ImageUrl], param: str, ticket: Ticket) -> list[Image.Image]:
        """Decoded images (400 for a bad one, 503 over the in-flight budget), charged to ``ticket``, timed as
        the 'decode' stage."""
        start = time.perf_counter()
        images = await self.loader.load_all(refs, param, ticket)
        if images:
            self.metrics.observe("decode", time.perf_counter() - start)
        return images

    async def judge(self, refs: Sequence[ImageUrl], text: str, param: str, ticket: Ticket) -> SafetyVerdict:
        """The deciding verdict of one request (counted in the verdict metrics): its images decoded (charged to
        ``ticket``) and judged with ``text`` in the shared batcher, or the text-only verdict without images.
        While its images decode, the batcher knows the request is coming (an idle worker may wait for it)."""
        verdict, _ = await self.judge_keeping(refs, text, param, ticket)
        return verdict

    async def judge_keeping(
        self, refs: Sequence[ImageUrl], text: str, param: str, ticket: Ticket
    ) -> tuple[SafetyVerdict, list[Image.Image]]:
        """:meth:`judge`, also returning the decoded images (to judge the answer with them later)."""
        images: list[Image.Image] = []
        if not refs:
            verdict = self.text_only()
        else:
            self.batcher.expect(1)
            try:
                images = await self.load_images(refs, param, ticket)
                pending = self.batcher.submit(GuardRequest(images=tuple(images), prompt=text), ticket)
            finally:
                self.batcher.expect(-1)
            verdict = await pending
        self.metrics.verdict(verdict)
        return verdict, images

    def require_answer_checks(self) -> bool:
        """Whether answers are judged (``check_answers``); raises :class:`ResponseHeadMissingError` when they
        must be but the guard cannot (fail closed)."""
        if not self.config.check_answers:
            return False
        if not self.guard.classifier.has_response_head:
            raise missing_head_error()
        return True

    async def judge_response(self, images: Sequence[Image.Image], prompt: str, answer: str) -> ResponseVerdict:
        """The verdict of ``answer`` to the request (``images``, ``prompt``): judged with each image in one
        vision pass (``classify_response_batch``, in a worker thread), the worst deciding; timed as 'response'."""
        start = time.perf_counter()
        try:
            verdicts = await self.guard.aclassify_response_batch(
                list(images), [prompt] * len(images), [answer] * len(images)
            )
        finally:
            self.metrics.observe("response", time.perf_counter() - start)
        verdict = worst_response(verdicts)
        self.metrics.response_verdict(verdict)
        return verdict

    def text_only(self) -> SafetyVerdict:
        """The verdict of a request without images (``on_text_only``)."""
        return text_only_verdict(self.config.on_text_only, self.guard.policy, self.guard.config.taxonomy)
