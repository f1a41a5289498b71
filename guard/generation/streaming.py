"""Streaming guarded answers: the verdict first, then text chunks from a transformers streamer.

The request is judged before a stream object exists, so nothing can be streamed before the verdict: a
blocked request raises at ``guard.stream(...)`` and a refused one streams its refusal text as one chunk.
With the streaming monitor on (:mod:`psaguard.generation.monitor`), chunks are the text the monitor releases after
judging it, held back ``policy.response.window`` tokens; a flagged answer stops and ends with the policy's
replacement (or raises :class:`~psaguard.errors.ResponseBlocked` for a 'block' action).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import Any

import torch
from transformers import TextIteratorStreamer

from psaguard.generation.plan import GenerationPlan, GuardedGeneration
from psaguard.verdict import Action, SafetyVerdict

__all__ = ["AsyncGuardedStream", "GuardedStream", "stream_text"]

_DONE = object()


def stream_text(
    model: Any,
    tokenizer: Any,
    inputs: dict[str, Any],
    generate_kwargs: dict[str, Any],
    thread_name: str = "psaguard-stream",
) -> Generator[str, None, Any]:
    """Yield the non-empty text chunks of ``model.generate(**inputs, **generate_kwargs)``; return its sequences.

    Generation runs in a daemon thread feeding a ``TextIteratorStreamer`` (prompt and special tokens
    skipped); an exception there is re-raised here once the streamer has been unblocked.
    """
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    outcome: dict[str, Any] = {}

    def produce() -> None:
        try:
            with torch.inference_mode():  # thread-local, so entered inside the worker thread
                outcome["sequences"] = model.generate(**inputs, **generate_kwargs, streamer=streamer)
        except BaseException as err:  # re-raised in the consumer; end() unblocks it
            outcome["error"] = err
            streamer.end()

    worker = threading.Thread(target=produce, name=thread_name, daemon=True)
    worker.start()
    for chunk in streamer:
        if chunk:
            yield chunk
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["sequences"]


class GuardedStream(Iterator[str]):
    """Text chunks of one guarded answer. ``verdict``, ``action`` and ``hint`` are set before the first chunk;
    ``result`` (a :class:`~psaguard.generation.plan.GuardedGeneration`) once the stream is exhausted.

    Generation starts on the first ``next()`` and runs in a background thread feeding a
    ``TextIteratorStreamer``; an error there is raised from the iterator.
    """

    def __init__(self, plan: GenerationPlan, start: float, generate_kwargs: dict[str, Any]) -> None:
        request = plan.requests[0]
        self.verdict: SafetyVerdict = request.verdict
        self.verdicts: list[SafetyVerdict] = request.verdicts
        self.action: Action = request.action
        self.hint: str | None = request.hint
        self._plan = plan
        self._start = start
        self._kwargs = generate_kwargs
        self._chunks: Iterator[str] | None = None
        self._result: GuardedGeneration | None = None

    def __iter__(self) -> GuardedStream:
        return self

    def __next__(self) -> str:
        if self._chunks is None:
            self._chunks = self._run()
        return next(self._chunks)

    @property
    def result(self) -> GuardedGeneration:
        """The full result; available once every chunk has been consumed."""
        if self._result is None:
            raise RuntimeError("the stream has not finished; consume it before reading .result")
        return self._result

    def _run(self) -> Iterator[str]:
        plan = self._plan
        if plan.inputs is None:  # refused: the answer is the policy's text, the model does not run
            if plan.requests[0].text:
                yield plan.requests[0].text
            self._result = plan.results(None, self._start, self._kwargs)[0]
            return
        if plan.monitors:
            sequences = yield from _monitored_chunks(plan, self._kwargs)
        else:
            sequences = yield from stream_text(
                plan.model, plan.tokenizer, plan.inputs.model_kwargs(), self._kwargs, thread_name="psaguard-stream"
            )
        result = plan.results(sequences, self._start, self._kwargs)[0]  # raises ResponseBlocked for 'block'
        if result.stopped and result.response_verdict is not None and result.response_verdict.replacement:
            yield result.response_verdict.replacement
        self._result = result


def _monitored_chunks(plan: GenerationPlan, generate_kwargs: dict[str, Any]) -> Generator[str, None, Any]:
    """Yield the text the monitor releases while ``plan.generate`` runs in a daemon thread; return its sequences."""
    released: queue.SimpleQueue[Any] = queue.SimpleQueue()
    outcome: dict[str, Any] = {}

    def produce() -> None:
        try:
            outcome["sequences"] = plan.generate(generate_kwargs, on_release=lambda _, text: released.put(text))
        except BaseException as err:  # re-raised in the consumer
            outcome["error"] = err
        finally:
            released.put(_DONE)

    worker = threading.Thread(target=produce, name="psaguard-monitored-stream", daemon=True)
    worker.start()
    while (chunk := released.get()) is not _DONE:
        yield chunk
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["sequences"]


class AsyncGuardedStream(AsyncIterator[str]):
    """Async :class:`GuardedStream`: judging and each chunk run in worker threads, off the event loop.

    ``await stream.start()`` judges the request and returns the deciding verdict (raising
    :class:`~psaguard.errors.GuardBlocked` for a blocked one); iterating starts it implicitly.
    """

    def __init__(self, open_stream: Callable[[], GuardedStream]) -> None:
        self._open_stream = open_stream
        self._stream: GuardedStream | None = None

    async def start(self) -> SafetyVerdict:
        """Judge the request (once) and return the deciding verdict."""
        if self._stream is None:
            self._stream = await asyncio.to_thread(self._open_stream)
        return self._stream.verdict

    @property
    def stream(self) -> GuardedStream:
        """The underlying synchronous stream (verdict, action, hint, result); after :meth:`start`."""
        if self._stream is None:
            raise RuntimeError("await start() or begin iterating first")
        return self._stream

    def __aiter__(self) -> AsyncGuardedStream:
        return self

    async def __anext__(self) -> str:
        await self.start()
        chunk = await asyncio.to_thread(next, self.stream, _DONE)
        if chunk is _DONE:
            raise StopAsyncIteration
        return chunk
