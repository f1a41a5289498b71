"""``PsaGuardMiddleware``: the guard as LangChain v1 agent middleware (needs ``pip install langchain``).

Before every model call of an agent, the guard judges the images of the conversation together with its
user text. Exits mirror LangChain's moderation middleware: ``"end"`` answers with the refusal (an
``AIMessage`` without tool calls, so the agent stops), ``"error"`` raises
:class:`~psaguard.errors.GuardBlocked`, ``"replace"`` sends the model the refusal notice instead of the
risky content. A hint is prepended to the agent's system message for that call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse

from psaguard.adapters.gate import (
    OnBlock,
    exit_for,
    hinted_system_message,
    refusal_message,
    refusal_text,
    replace_risky,
)
from psaguard.adapters.runnable import GuardRunnable
from psaguard.errors import GuardBlocked
from psaguard.guard import SafetyGuard
from psaguard.policy import TextOnlyAction
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
        on_text_only: Action for conversations without an image.
        allow_local_files: Read images given as local paths or ``file://`` URLs.

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
    ) -> None:
        super().__init__()
        self.judge = GuardRunnable(guard, on_text_only=on_text_only, allow_local_files=allow_local_files)
        self.on_block = on_block

    def wrap_model_call(self, request: ModelRequest, handler: _Handler) -> ModelResponse | Any:
        verdict = self.judge.invoke(request.messages)
        return self._route(request, verdict, handler)

    async def awrap_model_call(self, request: ModelRequest, handler: _AsyncHandler) -> ModelResponse | Any:
        verdict = await self.judge.ainvoke(request.messages)
        routed = self._route(request, verdict, handler)
        return await routed if isinstance(routed, Awaitable) else routed

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
