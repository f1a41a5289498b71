"""``GuardedChatModel``: a LangChain chat model over a local Hugging Face LLaVA model and its guard.

Every request is judged before the model runs (``guard.generate`` / ``guard.stream``): allowed and hinted
requests are answered by the model, refused ones with the policy's refusal, blocked ones end as the caller
chose (``on_block``). The verdict, action and rule are in ``response_metadata["psaguard"]`` and are sent as
the ``"psaguard_verdict"`` callback event. Async methods run the model in a worker thread.

Answers go through the guard's streaming monitor (``check_answers=True``, the default; docs/responses.md):
judged every ``policy.response.interval`` tokens while the model writes, released ``window`` tokens behind,
stopped and replaced when flagged (a 'block' action raises :class:`~psaguard.errors.ResponseBlocked`). The
answer's last verdict is in ``response_metadata["psaguard_response"]``. A guard without a response head
raises :class:`~psaguard.errors.ResponseHeadMissingError` unless ``check_answers=False``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from transformers import StoppingCriteriaList

from psaguard.adapters.messages import request_from_messages
from psaguard.adapters.stops import StopBuffer, StopOnStrings, truncate_at_stop
from psaguard.adapters.verdicts import VERDICT_EVENT, response_verdict_metadata, verdict_metadata
from psaguard.errors import ConfigError, GuardBlocked
from psaguard.generation.plain import plain_generate, plain_stream
from psaguard.generation.plan import GuardedGeneration
from psaguard.guard import SafetyGuard
from psaguard.policy import GenerationOptions, GuardPolicy, TextOnlyAction, refusal_text
from psaguard.request import GuardRequest
from psaguard.tokenization import tokenizer_of
from psaguard.verdict import Action, ResponseVerdict, SafetyVerdict

__all__ = ["GuardedChatModel"]

logger = logging.getLogger(__name__)


class _Outcome(BaseModel):
    """One judged request: the deciding verdict and, for answered requests, the text and token counts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    verdict: SafetyVerdict
    action: Action
    hint: str | None = None
    generated: bool = False
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    response_verdict: ResponseVerdict | None = None


class GuardedChatModel(BaseChatModel):
    """Chat model answering with a local LLaVA model behind a psaguard guard.

    Messages may hold text and image content blocks (see :mod:`psaguard.adapters.messages`); images are
    judged with the text of every turn. Requests without an image cannot be judged by the
    image-based guard and follow ``on_text_only``.

    Example:
        >>> chat = GuardedChatModel(guard=guard, max_tokens=64)
        >>> reply = chat.invoke([HumanMessage(content=[image_block, {"type": "text", "text": "What is it?"}])])
        >>> reply.response_metadata["psaguard"]["action"]
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    guard: SafetyGuard = Field(exclude=True, description="The guard; its model and processor answer requests.")
    model_name: str = Field("psaguard-llava", alias="model", description="Name reported in traces and metadata.")
    temperature: float | None = Field(None, ge=0, description="Sampling temperature; None or 0 decodes greedily.")
    max_tokens: int | None = Field(256, ge=1, description="Most new tokens per answer (max_new_tokens).")
    stop: list[str] | None = Field(None, description="Strings that end the answer (not included in it).")
    timeout: float | None = Field(None, description="Accepted for LangChain compatibility; local calls ignore it.")
    max_retries: int | None = Field(None, description="Accepted for LangChain compatibility; nothing is retried.")
    streaming: bool = Field(False, description="Answer invoke() by streaming internally.")
    on_block: Literal["end", "error"] | None = Field(
        None,
        description="Refused/blocked requests: 'end' answers with the refusal, 'error' raises GuardBlocked; "
        "None follows the policy (refuse -> refusal, block -> GuardBlocked).",
    )
    on_text_only: TextOnlyAction = Field("allow", description="Action for requests without an image.")
    allow_local_files: bool = Field(True, description="Read images given as local paths or file:// URLs.")
    options: GenerationOptions | None = Field(None, description="How hints and refusals are worded.")
    generate_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra `model.generate` arguments.")
    check_answers: bool = Field(
        True,
        description="Answer through the guard's streaming monitor; True needs a guard with a response head "
        "(ResponseHeadMissingError otherwise), False generates without judging answers.",
    )
    _generator: SafetyGuard = PrivateAttr()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        response = self.guard.policy.response
        if self.check_answers:  # fail closed: a guard that cannot judge answers is refused, not bypassed
            self.guard.classifier.require_response_head()
            if response.monitor is False:
                raise ConfigError("check_answers=True, but the guard's policy.response.monitor is false")
            self._generator = self.guard
        else:
            policy = self.guard.policy.model_copy(update={"response": response.model_copy(update={"monitor": False})})
            self._generator = self.guard.with_policy(policy)

    @classmethod
    def from_pretrained(
        cls,
        model_path: str | Path,
        guard_path: str | Path,
        *,
        policy: GuardPolicy | None = None,
        torch_dtype: Any = None,
        **fields: Any,
    ) -> GuardedChatModel:
        """Load a LLaVA model and processor from ``model_path`` and a trained guard from ``guard_path``."""
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(model_path, dtype=torch_dtype).eval()
        processor = AutoProcessor.from_pretrained(model_path)
        guard = SafetyGuard.from_pretrained(guard_path, model, processor, policy=policy)
        return cls(guard=guard, **fields)

    # ------------------------------------------------------------------ LangChain hooks
    @property
    def _llm_type(self) -> str:
        return "psaguard-llava"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "temperature": self.temperature, "max_tokens": self.max_tokens}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="psaguard",
            ls_model_name=kwargs.get("model", self.model_name),
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
        )
        if max_tokens := kwargs.get("max_tokens", self.max_tokens):
            params["ls_max_tokens"] = max_tokens
        if stops := stop or self.stop:
            params["ls_stop"] = stops
        return params

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        result, verdict = self._reply(messages, stop, kwargs)
        _emit_verdict(run_manager, verdict)
        return result

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        result, verdict = await asyncio.to_thread(self._reply, messages, stop, kwargs)
        await _aemit_verdict(run_manager, verdict)
        return result

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        # Judged before the first chunk: nothing is streamed for a request that ends up blocked.
        verdict, chunks = self._open_stream(messages, stop, kwargs)
        _emit_verdict(run_manager, verdict)
        for chunk in chunks:
            if run_manager and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # Judging and every chunk run in worker threads; callbacks run here, on the event loop.
        verdict, chunks = await asyncio.to_thread(self._open_stream, messages, stop, kwargs)
        await _aemit_verdict(run_manager, verdict)
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            if run_manager and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    # ------------------------------------------------------------------ replies (no callbacks)
    def _reply(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[ChatResult, SafetyVerdict]:
        request = request_from_messages(messages, allow_local_files=self.allow_local_files)
        stops = self._stops(stop)
        outcome = self._answer(request, self._generation_kwargs(stops, kwargs))
        text, stopped = truncate_at_stop(outcome.text, stops)
        message = AIMessage(
            content=text,
            response_metadata=self._metadata(outcome, self._finish_reason(outcome, stopped, kwargs)),
            usage_metadata=_usage(outcome.prompt_tokens, outcome.completion_tokens),
        )
        return ChatResult(generations=[ChatGeneration(message=message)]), outcome.verdict

    def _open_stream(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[SafetyVerdict, Iterator[ChatGenerationChunk]]:
        """Judge the request now; the chunks of its answer come from the returned iterator."""
        request = request_from_messages(messages, allow_local_files=self.allow_local_files)
        stops = self._stops(stop)
        outcome, pieces, finished = self._start_stream(request, self._generation_kwargs(stops, kwargs))
        return outcome.verdict, self._chunks(outcome, pieces, finished, stops, kwargs)

    def _chunks(
        self,
        outcome: _Outcome,
        pieces: Iterator[str],
        finished: Callable[[], _Outcome],
        stops: Sequence[str],
        kwargs: dict[str, Any],
    ) -> Iterator[ChatGenerationChunk]:
        buffer = StopBuffer(stops)
        first = True
        for piece in pieces:
            if text := buffer.push(piece):
                metadata = {"psaguard": verdict_metadata(outcome.verdict, hint=outcome.hint)} if first else {}
                first = False
                yield ChatGenerationChunk(message=AIMessageChunk(content=text, response_metadata=metadata))
            if buffer.stopped:
                break
        for _ in pieces:  # after a stop string: let generation (halted by StopOnStrings) end, drop the rest
            pass
        final = finished()
        metadata = self._metadata(final, self._finish_reason(final, buffer.stopped, kwargs))
        if not first:  # the psaguard block went out with the first chunk; chunks merge their metadata
            metadata.pop("psaguard")
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content=buffer.flush(),
                response_metadata=metadata,
                usage_metadata=_usage(final.prompt_tokens, final.completion_tokens),
                chunk_position="last",
            )
        )

    # ------------------------------------------------------------------ judging and answering
    def _answer(self, request: GuardRequest, generate_kwargs: dict[str, Any]) -> _Outcome:
        if not request.images:
            return self._text_only(request, generate_kwargs, stream=False)[0]
        try:
            result = self._generator.generate(
                list(request.images), list(request.conversation), options=self.options, **generate_kwargs
            )
        except GuardBlocked as err:  # action 'block': the model did not run
            return self._stopped(err.verdict)
        self._raise_if_error_exit(result.verdict)
        return _outcome_of(result)

    def _start_stream(
        self, request: GuardRequest, generate_kwargs: dict[str, Any]
    ) -> tuple[_Outcome, Iterator[str], Callable[[], _Outcome]]:
        """(verdict outcome, text chunks, a callable giving the final outcome once the chunks are consumed)."""
        if not request.images:
            return self._text_only(request, generate_kwargs, stream=True)
        try:
            stream = self._generator.stream(
                list(request.images), list(request.conversation), options=self.options, **generate_kwargs
            )
        except GuardBlocked as err:
            stopped = self._stopped(err.verdict)
            return stopped, iter([stopped.text]), lambda: stopped
        self._raise_if_error_exit(stream.verdict)
        # A refused request streams its refusal as one chunk (or, with refuse_with="hint", a generated answer).
        started = _Outcome(verdict=stream.verdict, action=stream.action, hint=stream.hint)
        return started, stream, lambda: _outcome_of(stream.result)

    def _text_only(
        self, request: GuardRequest, generate_kwargs: dict[str, Any], *, stream: bool
    ) -> tuple[_Outcome, Iterator[str], Callable[[], _Outcome]]:
        verdict = self.guard.classify_requests([request], on_text_only=self.on_text_only)[0]
        if verdict.action != "allow":
            stopped = self._stopped(verdict)
            return stopped, iter([stopped.text]), lambda: stopped
        started = _Outcome(verdict=verdict, action="allow", generated=True)
        if stream:
            pieces: list[str] = []

            def chunks() -> Iterator[str]:
                for piece in plain_stream(self.guard.classifier, request.conversation, **generate_kwargs):
                    pieces.append(piece)
                    yield piece

            return started, chunks(), lambda: started.model_copy(update={"text": "".join(pieces)})
        answer = plain_generate(self.guard.classifier, request.conversation, **generate_kwargs)
        outcome = started.model_copy(update=answer.model_dump())
        return outcome, iter([outcome.text]), lambda: outcome

    def _stopped(self, verdict: SafetyVerdict) -> _Outcome:
        """The outcome of a request the model does not answer: raise or end with the refusal, as configured."""
        self._raise_if_error_exit(verdict)
        return _Outcome(verdict=verdict, action=verdict.action, text=refusal_text(verdict))

    def _raise_if_error_exit(self, verdict: SafetyVerdict) -> None:
        """Raise GuardBlocked when a refused/blocked verdict must end in an error (``on_block``, else policy)."""
        if verdict.action not in ("refuse", "block"):
            return
        if (self.on_block or ("error" if verdict.action == "block" else "end")) == "error":
            raise GuardBlocked(verdict)

    # ------------------------------------------------------------------ helpers
    def _stops(self, stop: list[str] | None) -> list[str]:
        return list(stop if stop is not None else self.stop or [])

    def _generation_kwargs(self, stops: Sequence[str], call_kwargs: dict[str, Any]) -> dict[str, Any]:
        """``model.generate`` arguments from the fields, overridable per call (temperature, max_tokens)."""
        extra = {k: v for k, v in call_kwargs.items() if k != "model"}  # 'model' only names the model in traces
        temperature = extra.pop("temperature", self.temperature)
        max_tokens = extra.pop("max_tokens", self.max_tokens)
        kwargs: dict[str, Any] = {**self.generate_kwargs, **extra}
        if max_tokens is not None:
            kwargs["max_new_tokens"] = max_tokens
        if temperature:
            kwargs.update(do_sample=True, temperature=temperature)
        else:
            kwargs["do_sample"] = False
        if stops:
            # Halts generation at a stop string; the text is cut before it afterwards.
            tokenizer = tokenizer_of(self.guard.processor)
            criteria = StoppingCriteriaList([*kwargs.get("stopping_criteria", []), StopOnStrings(tokenizer, stops)])
            kwargs["stopping_criteria"] = criteria
        return kwargs

    def _metadata(self, outcome: _Outcome, finish_reason: str) -> dict[str, Any]:
        metadata = {
            "model_name": self.model_name,
            "finish_reason": finish_reason,
            "psaguard": verdict_metadata(outcome.verdict, hint=outcome.hint, generated=outcome.generated),
        }
        if outcome.response_verdict is not None:
            metadata["psaguard_response"] = response_verdict_metadata(outcome.response_verdict)
        return metadata

    def _finish_reason(self, outcome: _Outcome, stopped: bool, call_kwargs: dict[str, Any]) -> str:
        if not outcome.generated or (outcome.response_verdict is not None and outcome.response_verdict.flagged):
            return "content_filter"  # refused, or stopped by the streaming monitor
        limit = call_kwargs.get("max_tokens", self.max_tokens)
        return "length" if not stopped and limit is not None and outcome.completion_tokens >= limit else "stop"


def _outcome_of(result: GuardedGeneration) -> _Outcome:
    return _Outcome(
        verdict=result.verdict,
        action=result.action,
        hint=result.hint,
        generated=result.generated,
        text=result.text,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        response_verdict=result.response_verdict,
    )


def _usage(prompt_tokens: int, completion_tokens: int) -> UsageMetadata:
    return UsageMetadata(
        input_tokens=prompt_tokens, output_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


def _emit_verdict(run_manager: CallbackManagerForLLMRun | None, verdict: SafetyVerdict) -> None:
    """Send the verdict as a custom event attached to this chat-model run."""
    logger.debug("psaguard chat verdict: action=%s rule=%s", verdict.action, verdict.rule)
    if run_manager is not None:
        manager = CallbackManager(run_manager.handlers, tags=run_manager.tags, metadata=run_manager.metadata)
        manager.on_custom_event(VERDICT_EVENT, verdict_metadata(verdict), run_id=run_manager.run_id)


async def _aemit_verdict(run_manager: AsyncCallbackManagerForLLMRun | None, verdict: SafetyVerdict) -> None:
    """Async :func:`_emit_verdict`, on the event loop (stream-event handlers need it)."""
    logger.debug("psaguard chat verdict: action=%s rule=%s", verdict.action, verdict.rule)
    if run_manager is not None:
        manager = AsyncCallbackManager(run_manager.handlers, tags=run_manager.tags, metadata=run_manager.metadata)
        await manager.on_custom_event(VERDICT_EVENT, verdict_metadata(verdict), run_id=run_manager.run_id)
