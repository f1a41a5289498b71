"""One request's verdict: its images decoded and judged as one request in the shared batcher (the classifier's
request judge applies the worst-verdict and text-only rules)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from PIL import Image

from psaguard.guard import SafetyGuard
from psaguard.policy import text_only_verdict
from psaguard.request import GuardRequest
from psaguard.serving.admission import Ticket
from psaguard.serving.batching import DynamicBatcher
from psaguard.serving.config import ServeConfig
from psaguard.serving.inputs import ImageLoader
from psaguard.serving.metrics import ServeMetrics
from psaguard.serving.protocol import ImageUrl
from psaguard.verdict import SafetyVerdict

__all__ = ["Judge"]


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
        if not refs:
            verdict = self.text_only()
        else:
            self.batcher.expect(1)
            try:
                images = await self.load_images(refs, param, ticket)
                pending = self.batcher.submit(GuardRequest(images=tuple(images), prompt=text), ticket)
            finally:
                self.batcher.expect(-1)
            del images  # queued: the batch holds them until it is judged
            verdict = await pending
        self.metrics.verdict(verdict)
        return verdict

    def text_only(self) -> SafetyVerdict:
        """The verdict of a request without images (``on_text_only``)."""
        return text_only_verdict(self.config.on_text_only, self.guard.policy, self.guard.config.taxonomy)
