"""``AsyncGuardMethods``: the facade's async forms, each running its sync method in a worker thread."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial
from typing import Any

from psaguard.conversation import PromptInput
from psaguard.generation.generator import GuardedGenerator, ImagesInput
from psaguard.generation.plan import GuardedGeneration
from psaguard.generation.streaming import AsyncGuardedStream
from psaguard.images.decode import ImageInput
from psaguard.policy import GenerationOptions, TextOnlyAction
from psaguard.request import GuardRequest
from psaguard.verdict import ResponseVerdict, SafetyVerdict

__all__ = ["AsyncGuardMethods"]


class AsyncGuardMethods:
    """Async ``aclassify*``, ``agenerate*`` and ``astream`` for :class:`~psaguard.guard.SafetyGuard`, whose sync
    methods (``classify``, ``generate``, ...) they run in a worker thread; the event loop never waits on a model."""

    async def aclassify_requests(
        self, requests: Sequence[GuardRequest], *, on_text_only: TextOnlyAction = "block"
    ) -> list[SafetyVerdict]:
        """Async :meth:`classify_requests` (runs in a worker thread)."""
        return await asyncio.to_thread(partial(self.classify_requests, on_text_only=on_text_only), requests)

    async def aclassify(self, image: ImageInput, prompt: str) -> SafetyVerdict:
        """Async :meth:`classify` (runs in a worker thread)."""
        return await asyncio.to_thread(self.classify, image, prompt)

    async def aclassify_batch(self, images: Sequence[ImageInput], prompts: Sequence[str]) -> list[SafetyVerdict]:
        """Async :meth:`classify_batch` (runs in a worker thread)."""
        return await asyncio.to_thread(self.classify_batch, images, prompts)

    async def aclassify_response(self, image: ImageInput, prompt: str, response: str) -> ResponseVerdict:
        """Async :meth:`classify_response` (runs in a worker thread)."""
        return await asyncio.to_thread(self.classify_response, image, prompt, response)

    async def aclassify_response_batch(
        self, images: Sequence[ImageInput], prompts: Sequence[str], responses: Sequence[str]
    ) -> list[ResponseVerdict]:
        """Async :meth:`classify_response_batch` (runs in a worker thread)."""
        return await asyncio.to_thread(self.classify_response_batch, images, prompts, responses)

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

    def astream(
        self,
        image: ImagesInput,
        prompt: PromptInput,
        *,
        options: GenerationOptions | None = None,
        **generate_kwargs: Any,
    ) -> AsyncGuardedStream:
        """Async :meth:`stream`: ``async for chunk in guard.astream(...)``."""
        generator: GuardedGenerator = self._generator(options)
        return AsyncGuardedStream(partial(generator.stream, image, prompt, **generate_kwargs))
