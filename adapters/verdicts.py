"""The verdict summary the adapters send in callback events and ``response_metadata``."""

from __future__ import annotations

from typing import Any

from psaguard.verdict import SafetyVerdict

__all__ = ["VERDICT_EVENT", "verdict_metadata"]

VERDICT_EVENT = "psaguard_verdict"
"""Name of the custom callback event every adapter dispatches with a verdict."""


def verdict_metadata(verdict: SafetyVerdict, **extra: Any) -> dict[str, Any]:
    """JSON-ready summary of a verdict for events and ``response_metadata``: action and rule up front."""
    return {
        "action": verdict.action,
        "rule": verdict.rule,
        "level": verdict.level.code,
        "type": verdict.type.code,
        **extra,
        "verdict": verdict.model_dump(mode="json"),
    }
