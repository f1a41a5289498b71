"""``guarded(runnable, guard)``: the guard in front of any LangChain chat model or chain.

Risky requests never reach the wrapped runnable. What happens to them mirrors LangChain's moderation
middleware (``exit_behavior``):

* ``"end"``: return an ``AIMessage`` holding the policy's refusal, without calling the runnable;
* ``"error"``: raise :class:`~psaguard.errors.GuardBlocked` (the verdict is attached);
* ``"replace"``: replace the risky user content (text and images) with the refusal notice and call the
  runnable on that, so it can answer in its own words.

By default (``on_block=None``) the policy decides: action ``refuse`` ends with the refusal and ``block``
raises. Action ``hint`` prepends the hint to the system message (inserting one if needed); ``allow``
passes the input through unchanged.

The answer is judged too (``check_answers=True``, the default; :mod:`psaguard.adapters.answers`): a
flagged answer ends by the same exits (``"end"``: an ``AIMessage`` holding the response policy's
replacement; ``"replace"``: the answer with its text replaced; ``"error"``: raise
:class:`~psaguard.errors.ResponseBlocked`), and a streamed answer is held back until judged. A guard without
a response head raises :class:`~psaguard.errors.ResponseHeadMissingError` here unless
``check_answers=False``.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    CallbackManagerForChainRun,
    adispatch_custom_event,
    dispatch_custom_event,
)
from langchain_core.messages import AIMessageChunk
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import patch_config
from pydantic import ConfigDict, Field

from psaguard.adapters.answers import AnswerCheck
from psaguard.adapters.exits import apply_hint, exit_for, hinted_system_message, refusal_message, replace_risky
from psaguard.adapters.runnable import GuardRunnable
from psaguard.adapters.verdicts import VERDICT_EVENT, OnBlock, response_verdict_metadata
from psaguard.errors import GuardBlocked, PsaGuardError
from psaguard.guard import SafetyGuard
from psaguard.policy import TextOnlyAction, refusal_text
from psaguard.verdict import SafetyVerdict

# The exits (psaguard.adapters.exits) and refusal_text (psaguard.policy) are re-exported here for old imports.
__all__ = [
    "GuardGate",
    "OnBlock",
    "apply_hint",
    "exit_for",
    "guarded",
    "hinted_system_message",
    "refusal_message",
    "refusal_text",
    "replace_risky",
]

_Route = tuple[Literal["pass", "end"], Any]


class GuardGate(RunnableSerializable[Any, Any]):
    """Runs ``bound`` only on requests the guard lets through; see :func:`guarded`."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    bound: Runnable[Any, Any] = Field(description="The chat model or chain that answers allowed requests.")
    guard_runnable: GuardRunnable = Field(description="Judges each request before `bound` sees it.")
    on_block: OnBlock | None = Field(
        None,
        description="Exit for refused/blocked requests and flagged answers; None follows the policy (request: "
        "refuse->end, block->error; answer: replace->replace, block->error).",
    )
    check_answers: bool = Field(
        True,
        description="Judge the answers of `bound` with the guard's response head (streams held back until "
        "judged); False skips answer checks, the only way to use a guard without a response head.",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.check_answers:  # fail closed: a guard that cannot judge answers is refused, not bypassed
            self.guard_runnable.guard.classifier.require_response_head()  # typed error, not a ValidationError

    def answer_check(self, value: Any) -> AnswerCheck | None:
        """The check of the answer to the request ``value`` (as judged, before any hint or replacement); None
        when answers are not checked (``check_answers=False``, or a request without images, which the
        image-based guard cannot judge and ``on_text_only`` let through)."""
        if not self.check_answers:
            return None
        request = self.guard_runnable.parse(value)
        return AnswerCheck(self.guard_runnable.guard, request, self.on_block) if request.images else None

    def route(self, value: Any, verdict: SafetyVerdict) -> _Route:
        """Where a judged request goes: ``("pass", input for bound)`` or ``("end", final output)``."""
        if verdict.action == "allow":
            return "pass", value
        if verdict.action == "hint":
            return "pass", apply_hint(value, verdict.hint or "")
        exit_ = exit_for(verdict, self.on_block)
        if exit_ == "error":
            raise GuardBlocked(verdict)
        if exit_ == "replace":
            return "pass", replace_risky(value, refusal_text(verdict))
        return "end", refusal_message(verdict)

    # ------------------------------------------------------------------ invoke / batch
    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(self._invoke, input, config, **kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self._acall_with_config(self._ainvoke, input, config, **kwargs)

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        return self._batch_with_config(self._batch, inputs, config, return_exceptions=return_exceptions, **kwargs)

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        return await self._abatch_with_config(
            self._abatch, inputs, config, return_exceptions=return_exceptions, **kwargs
        )

    # ------------------------------------------------------------------ streaming (nothing before the verdict)
    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        yield from self._transform_stream_with_config(iter([input]), self._stream, config, **kwargs)

    async def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        async def single() -> AsyncIterator[Any]:
            yield input

        async for chunk in self._atransform_stream_with_config(single(), self._astream, config, **kwargs):
            yield chunk

    # ------------------------------------------------------------------ internals
    def _invoke(self, value: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig, **kw: Any) -> Any:
        child = patch_config(config, callbacks=run_manager.get_child())
        where, routed = self.route(value, self.guard_runnable.invoke(value, child))
        if where == "end":
            return routed
        return self._checked(value, self.bound.invoke(routed, child, **kw), child)

    async def _ainvoke(
        self, value: Any, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig, **kw: Any
    ) -> Any:
        child = patch_config(config, callbacks=run_manager.get_child())
        where, routed = self.route(value, await self.guard_runnable.ainvoke(value, child))
        if where == "end":
            return routed
        return await self._achecked(value, await self.bound.ainvoke(routed, child, **kw), child)

    def _stream(self, values: Iterator[Any], config: RunnableConfig, **kw: Any) -> Iterator[Any]:
        value = _single(values)
        where, routed = self.route(value, self.guard_runnable.invoke(value, config))
        if where == "end":
            yield AIMessageChunk(content=routed.content, response_metadata=routed.response_metadata)
            return
        check = self.answer_check(value)
        if check is None:
            yield from self.bound.stream(routed, config, **kw)
            return
        chunks = self.bound.stream(routed, config, **kw)
        try:
            for chunk in chunks:
                yield from check.push(chunk)
                if check.stopped:
                    break
        finally:
            _close(chunks)  # a stopped answer: the model stops writing
        tail = check.finish()
        _send(check, config)
        yield from tail
        yield from check.exit_chunks()

    async def _astream(self, values: AsyncIterator[Any], config: RunnableConfig, **kw: Any) -> AsyncIterator[Any]:
        items = [value async for value in values]
        value = _single(iter(items))
        where, routed = self.route(value, await self.guard_runnable.ainvoke(value, config))
        if where == "end":
            yield AIMessageChunk(content=routed.content, response_metadata=routed.response_metadata)
            return
        check = self.answer_check(value)
        if check is None:
            async for chunk in self.bound.astream(routed, config, **kw):
                yield chunk
            return
        chunks = self.bound.astream(routed, config, **kw)
        try:
            async for chunk in chunks:  # judging runs in a worker thread, off the event loop
                for released in await asyncio.to_thread(check.push, chunk):
                    yield released
                if check.stopped:
                    break
        finally:
            await _aclose(chunks)
        tail = await asyncio.to_thread(check.finish)
        await _asend(check, config)
        for released in [*tail, *check.exit_chunks()]:
            yield released

    def _checked(self, value: Any, output: Any, config: RunnableConfig) -> Any:
        """``output`` after the answer check: as is when it passed, else its exit (raises for 'error')."""
        check = self.answer_check(value)
        if check is None or check.judge(output) is None:
            return output
        _send(check, config)
        return check.outcome(output)

    async def _achecked(self, value: Any, output: Any, config: RunnableConfig) -> Any:
        check = self.answer_check(value)
        if check is None or await asyncio.to_thread(check.judge, output) is None:
            return output
        await _asend(check, config)
        return check.outcome(output)

    def _batch(self, inputs: list[Any], config: list[RunnableConfig], **kw: Any) -> list[Any]:
        # The guard judges all inputs in one pass; `bound` gets one batch of the requests that pass.
        verdicts = self.guard_runnable.batch(inputs, config, return_exceptions=True)
        results, passing = self._route_all(inputs, verdicts)
        if passing:
            values, configs = [v for _, v in passing], [config[i] for i, _ in passing]
            outputs = self.bound.batch(values, configs, return_exceptions=True, **kw)
            for (i, _), output in zip(passing, outputs):
                results[i] = output
                if isinstance(output, Exception):
                    continue
                try:
                    results[i] = self._checked(inputs[i], output, config[i])
                except PsaGuardError as err:
                    results[i] = err
        return results

    async def _abatch(self, inputs: list[Any], config: list[RunnableConfig], **kw: Any) -> list[Any]:
        verdicts = await self.guard_runnable.abatch(inputs, config, return_exceptions=True)
        results, passing = self._route_all(inputs, verdicts)
        if passing:
            values, configs = [v for _, v in passing], [config[i] for i, _ in passing]
            outputs = await self.bound.abatch(values, configs, return_exceptions=True, **kw)
            for (i, _), output in zip(passing, outputs):
                if isinstance(output, Exception):
                    results[i] = output
                    continue
                try:
                    results[i] = await self._achecked(inputs[i], output, config[i])
                except PsaGuardError as err:
                    results[i] = err
        return results

    def _route_all(self, inputs: list[Any], verdicts: list[Any]) -> tuple[list[Any], list[tuple[int, Any]]]:
        results: list[Any] = [None] * len(inputs)
        passing: list[tuple[int, Any]] = []
        for i, (value, verdict) in enumerate(zip(inputs, verdicts)):
            if isinstance(verdict, Exception):
                results[i] = verdict
                continue
            try:
                where, routed = self.route(value, verdict)
            except GuardBlocked as err:
                results[i] = err
                continue
            if where == "end":
                results[i] = routed
            else:
                passing.append((i, routed))
        return results, passing


def guarded(
    runnable: Runnable[Any, Any],
    guard: SafetyGuard,
    *,
    on_block: OnBlock | None = None,
    on_text_only: TextOnlyAction = "allow",
    allow_local_files: bool = True,
    check_answers: bool = True,
) -> GuardGate:
    """Put ``guard`` in front of ``runnable`` (any chat model or chain, local or hosted).

    Args:
        runnable: What answers allowed requests; it receives the input (hinted or replaced when the
            policy says so): chat messages, a ``PromptValue``, a string, or a ``{"image", "prompt"}`` dict.
        guard: The guard that judges every request first.
        on_block: ``"end"`` (refusal ``AIMessage``), ``"error"`` (raise ``GuardBlocked``, or ``ResponseBlocked``
            for an answer) or ``"replace"`` (answer on the refusal notice instead of the risky content; a
            flagged answer's text replaced); None follows the policy.
        on_text_only: Action for requests without an image, which the guard cannot judge (their answers are
            not judged either).
        allow_local_files: Read images given as local paths or ``file://`` URLs.
        check_answers: Judge the answers of ``runnable`` with the guard's response head, streams held back
            until judged (docs/langchain.md). True on a guard without a response head raises
            :class:`~psaguard.errors.ResponseHeadMissingError`; False skips answer checks.

    Example:
        >>> chain = prompt | guarded(ChatOpenAI(model="gpt-4o"), guard) | StrOutputParser()
    """
    judge = GuardRunnable(guard, on_text_only=on_text_only, allow_local_files=allow_local_files)
    return GuardGate(bound=runnable, guard_runnable=judge, on_block=on_block, check_answers=check_answers)


def _send(check: AnswerCheck, config: RunnableConfig) -> None:
    """Send the answer's verdict (when it was judged) as the verdict event of this run."""
    if check.verdict is not None:
        dispatch_custom_event(VERDICT_EVENT, response_verdict_metadata(check.verdict), config=config)


async def _asend(check: AnswerCheck, config: RunnableConfig) -> None:
    if check.verdict is not None:
        await adispatch_custom_event(VERDICT_EVENT, response_verdict_metadata(check.verdict), config=config)


def _close(chunks: Iterator[Any]) -> None:
    close = getattr(chunks, "close", None)
    if close is not None:
        close()


async def _aclose(chunks: AsyncIterator[Any]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


def _single(values: Iterator[Any]) -> Any:
    items = list(values)
    if len(items) != 1:
        raise ValueError(f"a guarded runnable streams one input at a time, got {len(items)}")
    return items[0]


def __getattr__(name: str) -> Any:
    # `GuardedRunnable` read as one letter away from `GuardRunnable` (the judge); renamed, kept for one release.
    if name == "GuardedRunnable":
        warnings.warn(
            "psaguard.adapters.GuardedRunnable is now GuardGate; the old name goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return GuardGate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
