"""``PsaGuardMiddleware``: the guard as LangChain v1 agent middleware (needs ``pip install langchain``).

Before every model call of an agent, the guard judges the images of the conversation together with its
user text. Exits mirror LangChain's moderation middleware: ``"end"`` answers with the refusal (an
``AIMessage`` without tool calls, so the agent stops), ``"error"`` raises
:class:`~psaguard.errors.GuardBlocked`, ``"replace"`` sends the model the refusal notice instead of the
risky content. A hint is prepended to the agent's system message for that call.

The model's answer is judged too (``check_answers=True``, the default): a flagged answer ends by the same
exits (``"end"``: an ``AIMessage`` holding the response policy's replacement, no tool calls, so the agent
stops; ``"replace"``: the model's message with its text replaced and its tool calls dropped; ``"error"``:
:class:`~psaguard.errors.ResponseBlocked`); None follows the response policy (replace -> replace, block ->
error). LangChain v1 middleware has no hook on streamed output (langchain issue #35011): ``wrap_model_call``
sees the whole answer, after an agent streaming with ``stream_mode="messages"`` has already emitted its
tokens. To stream an agent's answer only once judged, give the agent a model that judges its own stream:
``create_agent(guarded(model, guard), ...)`` or ``GuardedChatModel`` (docs/langchain.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.callbacks import adispatch_custom_event, dispatch_custom_event
from langchain_core.messages import AIMessage

from psaguard.adapters.answers import AnswerCheck
from psaguard.adapters.exits import exit_for, hinted_system_message, refusal_message, replace_risky
from psaguard.adapters.runnable import GuardRunnable
from psaguard.adapters.verdicts import VERDICT_EVENT, OnBlock, response_verdict_metadata
from psaguard.errors import GuardBlocked
from psaguard.guard import SafetyGuard
from psaguard.policy import TextOnlyAction, refusal_text
from psaguard.verdict import SafetyVerdict

__all__ = ["PsaGuardMiddleware"]

_Handler = Callable[[ModelRequest], ModelResponse]
_AsyncHandler = Callable[[ModelRequest], Awaitable[ModelResponse]]


class PsaGuardMiddleware(AgentMiddleware):
    """Judges each model request of an agent with a psaguard guard; see the module docstring.

    The whole conversation is judged on every model call, because the model sees all of it: a refused
    image stays in the thread, so with ``on_block="end"`` later turns of that thread are refused too.

    Args:
        guard: The guard.
        on_block: ``"end"``, ``"error"`` or ``"replace"`` for refused/blocked requests; None follows the
            policy (refuse ends with the refusal, block raises).
        on_text_only: Action for conversations without an image (their answers are not judged either).
        allow_local_files: Read images given as local paths or ``file://`` URLs.
        check_answers: Judge each answer of the model with the guard's response head; True on a guard
            without one raises :class:`~psaguard.errors.ResponseHeadMissingError`, False skips answer checks.

    Example:
        >>> agent = create_agent(model, tools, middleware=[PsaGuardMiddleware(guard, on_block="end")])
    """

    def __init__(
        self,
        guard: SafetyGuard,
        *,
        on_block: OnBlock | None = None,
        on_text_only: TextOnlyAction = "allow",
        allow_local_files: bool = True,
        check_answers: bool = True,
    ) -> None:
        super().__init__()
        if check_answers:  # fail closed: a guard that cannot judge answers is refused, not bypassed
            guard.classifier.require_response_head()
        self.judge = GuardRunnable(guard, on_text_only=on_text_only, allow_local_files=allow_local_files)
        self.on_block = on_block
        self.check_answers = check_answers

    def wrap_model_call(self, request: ModelRequest, handler: _Handler) -> ModelResponse | Any:
        verdict = self.judge.invoke(request.messages)
        check = self._answer_check(request)
        response = self._route(request, verdict, handler)
        if check is None or isinstance(response, AIMessage):  # unchecked, or the request's refusal
            return response
        answer = _answer(response)
        if answer is None or (verdict := check.judge(answer)) is None:
            return response
        dispatch_custom_event(VERDICT_EVENT, response_verdict_metadata(verdict))  # to the agent's model-node run
        return _with_answer(response, answer, check.outcome(answer))

    async def awrap_model_call(self, request: ModelRequest, handler: _AsyncHandler) -> ModelResponse | Any:
        verdict = await self.judge.ainvoke(request.messages)
        check = self._answer_check(request)
        routed = self._route(request, verdict, handler)
        response = await routed if isinstance(routed, Awaitable) else routed
        if check is None or isinstance(response, AIMessage):
            return response
        answer = _answer(response)
        if answer is None or (verdict := await asyncio.to_thread(check.judge, answer)) is None:
            return response
        await adispatch_custom_event(VERDICT_EVENT, response_verdict_metadata(verdict))
        return _with_answer(response, answer, check.outcome(answer))

    def _answer_check(self, request: ModelRequest) -> AnswerCheck | None:
        """The check of the answer to the conversation as judged (before any hint or replacement); None when
        answers are not checked (``check_answers=False``, or a conversation without images)."""
        if not self.check_answers:
            return None
        judged = self.judge.parse(request.messages)
        return AnswerCheck(self.judge.guard, judged, self.on_block) if judged.images else None

    def _route(self, request: ModelRequest, verdict: SafetyVerdict, handler: Callable[[ModelRequest], Any]) -> Any:
        """The handler's result on the (possibly changed) request, or the refusal; raises for 'error'."""
        if verdict.action == "allow":
            return handler(request)
        if verdict.action == "hint":
            system = hinted_system_message(request.system_message, verdict.hint or "")
            return handler(request.override(system_message=system))
        exit_ = exit_for(verdict, self.on_block)
        if exit_ == "error":
            raise GuardBlocked(verdict)
        if exit_ == "replace":
            return handler(request.override(messages=replace_risky(request.messages, refusal_text(verdict))))
        return refusal_message(verdict)


def _answer(response: ModelResponse | Any) -> AIMessage | None:
    """The model's answer in a handler's result: the last ``AIMessage`` of a ``ModelResponse`` (or the message)."""
    if isinstance(response, AIMessage):
        return response
    messages = getattr(response, "result", None) or []
    return next((m for m in reversed(messages) if isinstance(m, AIMessage)), None)


def _with_answer(response: ModelResponse | Any, answer: AIMessage, outcome: AIMessage) -> ModelResponse | Any:
    """``response`` with ``answer`` swapped for the check's ``outcome`` (the same object when it passed)."""
    if outcome is answer or not isinstance(response, ModelResponse):
        return outcome if outcome is not answer else response
    result = [outcome if message is answer else message for message in response.result]
    return ModelResponse(result=result, structured_response=response.structured_response)
