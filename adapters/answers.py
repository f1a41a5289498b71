"""Checking what a guarded chat model or chain answers (``guarded()``, ``PsaGuardMiddleware``).

:class:`AnswerCheck` judges one answer to a judged request with the guard's response head, through
:class:`~psaguard.generation.monitor.AnswerMonitor` (the same judgement as ``SafetyGuard.classify_response``, the
request's images encoded once). A whole answer is judged once; a streamed one every ``policy.response.interval``
tokens of the guard's tokenizer, and its chunks are held back
(:class:`~psaguard.generation.release_gate.ReleaseGate`, the rule the server's proxy mode shares) until the text
they carry has been judged and lies at least ``policy.response.window`` tokens behind the last judged position. A
flagged answer ends by the same exits as a flagged request (:data:`~psaguard.adapters.verdicts.OnBlock`): ``"end"``
(an ``AIMessage`` holding the replacement), ``"replace"`` (the answer, same type, with its text replaced and its
tool calls dropped) or ``"error"`` (:class:`~psaguard.errors.ResponseBlocked`); None follows the response policy
(replace -> replace, block -> error). The answer's verdict is in ``response_metadata["psaguard_response"]``
(``"side": "response"``), as in the server and ``GuardedChatModel``; ``"psaguard"`` holds request verdicts.

Only text is judged: a message's ``.text`` (text blocks), or a string. An answer without text (tool calls
only) passes unjudged; any other output (a dict, a parsed object) raises :class:`~psaguard.errors.InvalidInputError`,
since the guard cannot judge it (pass ``check_answers=False`` to skip answer checks).
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage

from psaguard.adapters.verdicts import OnBlock, response_verdict_metadata
from psaguard.errors import InvalidInputError, ResponseBlocked
from psaguard.generation.release_gate import ReleaseGate
from psaguard.guard import SafetyGuard
from psaguard.request import GuardRequest
from psaguard.responses.policy import replacement_text
from psaguard.verdict import ResponseVerdict

__all__ = ["AnswerCheck", "answer_text", "response_exit_for"]


def answer_text(output: Any) -> str:
    """The text of an answer or streamed chunk: a message's text blocks, or the string itself."""
    if isinstance(output, BaseMessage):
        return output.text
    if isinstance(output, str):
        return output
    raise InvalidInputError(
        f"psaguard judges answers given as messages or strings, and the runnable returned {type(output).__name__}; "
        "put the guard on the chat model (before any parser), or pass check_answers=False to skip answer checks"
    )


def response_exit_for(verdict: ResponseVerdict, on_block: OnBlock | None) -> OnBlock:
    """The exit of a flagged answer: the caller's choice, else the response policy's action."""
    if on_block is not None:
        return on_block
    return "error" if verdict.action == "block" else "replace"


class AnswerCheck:
    """Judges one answer of the wrapped runnable to ``request``; see the module docstring."""

    def __init__(self, guard: SafetyGuard, request: GuardRequest, on_block: OnBlock | None) -> None:
        self.guard = guard
        self.monitor = guard.answer_monitor(request)
        self.on_block = on_block
        self.gate: ReleaseGate[Any] = ReleaseGate(self.monitor)
        self._kind: type | None = None

    @property
    def verdict(self) -> ResponseVerdict | None:
        """The last judgement of the answer; None while (or when) nothing was judged."""
        return self.monitor.verdict

    @property
    def stopped(self) -> bool:
        return self.monitor.stopped

    # ------------------------------------------------------------------ whole answers
    def judge(self, output: Any) -> ResponseVerdict | None:
        """Judge a whole answer; None for one without text (nothing to judge)."""
        text = answer_text(output)
        return self.monitor.judge(text) if text.strip() else None

    def outcome(self, output: Any) -> Any:
        """``output`` when it passed, else its exit: the ended or replaced answer; raises for ``"error"``."""
        verdict = self.monitor.verdict
        if verdict is None or not verdict.flagged:
            return output
        exit_ = self._exit(verdict)
        if exit_ == "end":
            return self.ended(verdict)
        return self._replaced(output, verdict)

    # ------------------------------------------------------------------ streamed answers
    def push(self, chunk: Any) -> list[Any]:
        """Add a streamed chunk; the chunks now released (all their text judged), in order."""
        self._kind = self._kind or type(chunk)
        return self.gate.push(chunk, answer_text(chunk))

    def finish(self) -> list[Any]:
        """At the end of the stream: judge the rest (an answer without text is not judged); the chunks held back
        when the answer passed, else none."""
        return self.gate.finish()

    def exit_chunks(self) -> list[Any]:
        """What a stopped stream ends with: one chunk holding the replacement (a string in a stream of strings
        under ``"replace"``); raises :class:`ResponseBlocked` for ``"error"``."""
        verdict = self.monitor.verdict
        if verdict is None or not verdict.flagged:
            return []
        exit_ = self._exit(verdict)
        if exit_ == "replace" and self._kind is not None and issubclass(self._kind, str):
            return [self.replacement(verdict)]
        return [AIMessageChunk(content=self.replacement(verdict), response_metadata=self.response_metadata(verdict))]

    # ------------------------------------------------------------------ helpers
    def replacement(self, verdict: ResponseVerdict) -> str:
        """The text standing for the flagged answer (the response policy's replacement for its type)."""
        return replacement_text(verdict, self.guard.policy.response, self.guard.config.taxonomy)

    def metadata(self, verdict: ResponseVerdict) -> dict[str, Any]:
        """The answer's verdict summary for a flagged answer, with what was released."""
        return response_verdict_metadata(verdict, released_chars=self.monitor.released)

    def response_metadata(self, verdict: ResponseVerdict) -> dict[str, Any]:
        """``{"psaguard_response": summary}``: what a flagged answer adds to its ``response_metadata``."""
        return {"psaguard_response": self.metadata(verdict)}

    def ended(self, verdict: ResponseVerdict) -> AIMessage:
        """The ``AIMessage`` a flagged answer ends with (no tool calls, so an agent stops)."""
        return AIMessage(content=self.replacement(verdict), response_metadata=self.response_metadata(verdict))

    def _exit(self, verdict: ResponseVerdict) -> OnBlock:
        exit_ = response_exit_for(verdict, self.on_block)
        if exit_ == "error":
            raise ResponseBlocked(verdict)
        return exit_

    def _replaced(self, output: Any, verdict: ResponseVerdict) -> Any:
        text = self.replacement(verdict)
        if isinstance(output, str):
            return text
        update: dict[str, Any] = {
            "content": text,
            "response_metadata": {**output.response_metadata, **self.response_metadata(verdict)},
        }
        if isinstance(output, AIMessage):
            update.update(tool_calls=[], invalid_tool_calls=[])
        return output.model_copy(update=update)
