"""The verdict summaries the adapters send in callback events and ``response_metadata``; ``"side"`` says
whether the request or the answer was judged."""

from __future__ import annotations

from typing import Any, Literal

from psaguard.verdict import ResponseVerdict, SafetyVerdict

__all__ = ["VERDICT_EVENT", "OnBlock", "response_verdict_metadata", "verdict_metadata"]

OnBlock = Literal["end", "error", "replace"]
"""How a refused or blocked request, or a flagged answer, ends: a refusal message, an exception, or replaced content."""

VERDICT_EVENT = "psaguard_verdict"
"""Name of the custom callback event every adapter dispatches with a verdict."""


def verdict_metadata(verdict: SafetyVerdict, **extra: Any) -> dict[str, Any]:
    """JSON-ready summary of a verdict for events and ``response_metadata``: action and rule up front."""
    return {
        "side": "request",
        "action": verdict.action,
        "rule": verdict.rule,
        "level": verdict.level.code,
        "type": verdict.type.code,
        **extra,
        "verdict": verdict.model_dump(mode="json"),
    }


def response_verdict_metadata(verdict: ResponseVerdict, **extra: Any) -> dict[str, Any]:
    """JSON-ready summary of an answer's verdict (``"side": "response"``), shaped like :func:`verdict_metadata`."""
    return {
        "side": "response",
        "action": verdict.action,
        "rule": verdict.rule,
        "level": verdict.level.code,
        "type": verdict.type.code,
        "harm_prob": verdict.harm_prob,
        "risk_source": verdict.risk_source,
        "tokens_judged": verdict.tokens_judged,
        **extra,
        "verdict": verdict.model_dump(mode="json"),
    }
