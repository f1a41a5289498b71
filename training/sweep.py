"""The policy-threshold sweep: how often the policy acts on unsafe and on safe requests at each threshold.

Every rule's level threshold (``TypeRule.threshold``, the tail probability ``P(level >= L)`` needed to act
at level ``L``) is set to ``t``, and the stored verdict probabilities are re-decided with
:func:`psaguard.policy.decide`, so each point is exactly what ``guard.with_policy(...)`` would do. With
calibrated probabilities a user can read off the threshold for a target recall or over-refusal.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from psaguard.categories.config import CustomCategory
from psaguard.policy import GuardPolicy, decide
from psaguard.taxonomy import Taxonomy
from psaguard.verdict import SafetyVerdict

__all__ = ["DEFAULT_SWEEP", "SweepPoint", "policy_with_threshold", "threshold_for_recall", "threshold_sweep"]

DEFAULT_SWEEP = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
"""Thresholds swept by default."""


class SweepPoint(BaseModel):
    """Where the policy acts at one level threshold: the shares of unsafe and of safe requests it flags."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(gt=0, le=1, description="Level threshold of every policy rule.")
    flagged_unsafe: float = Field(ge=0, le=1, description="Unsafe requests given any action but 'allow'.")
    flagged_safe: float = Field(ge=0, le=1, description="Safe requests given any action but 'allow'.")


def policy_with_threshold(policy: GuardPolicy, threshold: float) -> GuardPolicy:
    """A copy of ``policy`` with every rule's level threshold set to ``threshold``."""
    rules = {code: rule.model_copy(update={"threshold": threshold}) for code, rule in policy.types.items()}
    default = policy.default_rule.model_copy(update={"threshold": threshold})
    return policy.model_copy(update={"types": rules, "default_rule": default})


def threshold_sweep(
    verdicts: Sequence[SafetyVerdict],
    unsafe: Sequence[bool],
    policy: GuardPolicy,
    taxonomy: Taxonomy,
    thresholds: Sequence[float] = DEFAULT_SWEEP,
    categories: Sequence[CustomCategory] = (),
) -> list[SweepPoint]:
    """Shares of the ``unsafe`` and the other requests flagged when every rule's threshold is each of ``thresholds``.

    ``categories`` are the guard's custom categories (their probabilities are in ``verdict.custom_scores``):
    they keep deciding as they do in the guard, since the type rules' thresholds do not apply to them.
    """
    points = []
    for t in thresholds:
        changed = policy_with_threshold(policy, t)
        flagged = [
            decide(
                list(v.level_probs.values()),
                list(v.type_probs.values()),
                changed,
                taxonomy,
                categories=categories,
                custom_probs=[v.custom_scores[c.code] for c in categories],
            ).action
            != "allow"
            for v in verdicts
        ]
        on_unsafe = [f for f, u in zip(flagged, unsafe) if u]
        on_safe = [f for f, u in zip(flagged, unsafe) if not u]
        points.append(
            SweepPoint(
                threshold=t,
                flagged_unsafe=sum(on_unsafe) / max(1, len(on_unsafe)),
                flagged_safe=sum(on_safe) / max(1, len(on_safe)),
            )
        )
    return points


def threshold_for_recall(points: Sequence[SweepPoint], recall: float = 0.9) -> SweepPoint | None:
    """The point with the highest threshold that still flags at least ``recall`` of unsafe requests."""
    ok = [p for p in points if p.flagged_unsafe >= recall]
    return max(ok, key=lambda p: p.threshold, default=None)
