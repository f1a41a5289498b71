"""Verdict helpers shared by the adapters: text-only requests and the verdict summary of events and metadata."""

from __future__ import annotations

from typing import Any, Literal

from psaguard.guard import SafetyGuard
from psaguard.policy import fixed_verdict
from psaguard.verdict import SafetyVerdict

__all__ = ["NO_IMAGE_RULE", "VERDICT_EVENT", "TextOnlyAction", "text_only_verdict", "verdict_metadata"]

VERDICT_EVENT = "psaguard_verdict"
"""Name of the custom callback event every adapter dispatches with a verdict."""

TextOnlyAction = Literal["allow", "refuse", "block"]
"""What to do with a request that holds no image (the PSA-VLM head judges images, so it cannot judge it)."""

NO_IMAGE_RULE = "no_image"
"""The rule of verdicts for requests without an image."""


def text_only_verdict(guard: SafetyGuard, action: TextOnlyAction) -> SafetyVerdict:
    """The verdict of a request without images, with the action the caller chose for such requests."""
    return fixed_verdict(
        action, NO_IMAGE_RULE, guard.policy, guard.config.taxonomy, concept="content the image guard cannot check"
    )


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
