"""The response side of the policy: which action an answer verdict triggers, and how the streaming monitor
judges a growing answer (docs/responses.md). The request side is :mod:`psaguard.policy`."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from psaguard.decision import (
    ErrorAction,
    LevelRule,
    acted_level,
    check_rules_against,
    check_template,
    checked_templates,
)
from psaguard.taxonomy import DEFAULT_TAXONOMY, Taxonomy
from psaguard.verdict import LabelRef, ResponseAction, ResponseVerdict, RiskSource, SafetyVerdict

__all__ = [
    "DEFAULT_REPLACEMENT",
    "ResponsePolicy",
    "ResponseRule",
    "decide_response",
    "replacement_text",
    "response_error_verdict",
    "risk_source",
    "worst_response",
]

_SEVERITY: dict[str, int] = {"allow": 0, "replace": 1, "block": 2}
"""How severe each answer action is (which verdict decides an answer judged once per image)."""

DEFAULT_REPLACEMENT = "I'm sorry, but I can't continue this answer because it involves {concept}."
"""What replaces an answer the response policy flags ('{concept}' is the type's phrase)."""


class ResponseRule(LevelRule):
    """How the response policy treats one risk type of an answer."""

    actions: dict[int, ResponseAction] = Field(default_factory=dict, description="Per-level action overrides.")
    replacement: str | None = Field(None, description="Replacement text override for this type ({concept}).")

    @field_validator("replacement")
    @classmethod
    def _template_format(cls, value: str | None) -> str | None:
        return checked_templates(value)  # type: ignore[return-value]


class ResponsePolicy(BaseModel):
    """Which action each answer verdict triggers, and how the streaming monitor judges a growing answer.

    The monitor judges the answer every ``interval`` generated tokens and releases text only up to
    ``window`` tokens behind the last judged position, so nothing reaches the caller unjudged and text
    close to a flagged position is never released (docs/responses.md).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    level_actions: dict[int, ResponseAction] = Field(
        default_factory=dict,
        description="Action for answer level ids when no type rule overrides it; levels not named are 'replace' "
        "(level 0 is always 'allow'), so the default fits any taxonomy.",
    )
    replacement: str = Field(
        DEFAULT_REPLACEMENT, description="Replacement template for a flagged answer; '{concept}' is the type's phrase."
    )
    types: dict[str, ResponseRule] = Field(default_factory=dict, description="Rules by risk type code.")
    default_rule: ResponseRule = Field(default_factory=ResponseRule, description="Rule for types not in `types`.")
    monitor: bool | None = Field(
        None,
        description="Judge answers while they are generated (generate, stream, wrap). None: on exactly when the "
        "guard has a response head; True on a guard without one raises ResponseHeadMissingError.",
    )
    interval: int = Field(8, ge=1, le=4096, description="Generated tokens between two judgements of the answer.")
    window: int = Field(
        8, ge=0, le=4096, description="Hold-back: judged tokens kept unreleased behind the last judged position."
    )

    @field_validator("replacement")
    @classmethod
    def _template_format(cls, value: str) -> str:
        return check_template(value, "concept")

    def validate_against(self, taxonomy: Taxonomy) -> ResponsePolicy:
        """Check type codes and level ids against ``taxonomy``; raise :class:`ConfigError` naming the problem."""
        check_rules_against(
            taxonomy, "response policy", "response.", self.default_rule, self.types, self.level_actions, set()
        )
        return self

    def rule_for(self, type_code: str) -> ResponseRule:
        """The rule of a type: its own, else the default."""
        return self.types.get(type_code, self.default_rule)

    def monitors(self, has_response_head: bool) -> bool:
        """Whether guarded generation runs the streaming monitor for a guard with or without a response head."""
        return has_response_head if self.monitor is None else self.monitor


_SEVERITY: dict[str, int] = {"allow": 0, "replace": 1, "block": 2}
"""Order of the response actions, least severe first."""


def worst_response(verdicts: Sequence[ResponseVerdict]) -> ResponseVerdict:
    """The deciding verdict of one answer judged with each of its request's images: the most severe action,
    then the highest harm probability (as the request side takes its worst image)."""
    if not verdicts:
        raise ValueError("worst_response needs at least one verdict")
    return max(verdicts, key=lambda verdict: (_SEVERITY[verdict.action], verdict.harm_prob))


def risk_source(harmful: bool, image: SafetyVerdict | None, request: SafetyVerdict | None) -> RiskSource | None:
    """Where the risk of a harmful answer sits: the image alone (judged with no text) flagged, else the
    request (image + prompt) flagged, else the answer itself; None for an answer that is not harmful."""
    if not harmful:
        return None
    if image is not None and image.flagged:
        return "image"
    if request is not None and request.flagged:
        return "request"
    return "response"


def decide_response(
    level_probs: Sequence[float],
    type_probs: Sequence[float],
    policy: ResponsePolicy,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
    *,
    image: SafetyVerdict | None = None,
    request: SafetyVerdict | None = None,
    tokens_judged: int | None = None,
    latency_ms: float = 0.0,
) -> ResponseVerdict:
    """Turn one answer's level and type probabilities into a :class:`ResponseVerdict`.

    ``image`` (the image judged with no text) and ``request`` (with the prompt) locate the risk.
    """
    risk_type, rule, level_id, fired = acted_level(level_probs, type_probs, policy.rule_for, taxonomy)
    action: ResponseAction = "allow"
    harmful = fired is None
    if fired is None:
        action = rule.actions.get(level_id, policy.level_actions.get(level_id, "replace"))
        fired = f"type:{risk_type.code}/level:{taxonomy.levels[level_id].code}"
    replacement = (rule.replacement or policy.replacement).format(concept=risk_type.concept)
    level = taxonomy.levels[level_id]
    return ResponseVerdict(
        harmful=harmful,
        harm_prob=min(1.0, max(0.0, 1.0 - float(level_probs[0]))),
        level=LabelRef(id=level.id, code=level.code, name=level.name),
        type=LabelRef(id=risk_type.id, code=risk_type.code, name=risk_type.name),
        level_probs={lv.code: float(p) for lv, p in zip(taxonomy.levels, level_probs)},
        type_probs={t.code: float(p) for t, p in zip(taxonomy.types, type_probs)},
        action=action,
        rule=fired,
        replacement=replacement if action == "replace" else None,
        risk_source=risk_source(harmful, image, request),
        request=request,
        tokens_judged=tokens_judged,
        latency_ms=latency_ms,
    )


def response_error_verdict(
    reason: str,
    on_error: ErrorAction,
    policy: ResponsePolicy,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
    tokens_judged: int | None = None,
) -> ResponseVerdict:
    """The answer verdict used when the guard cannot judge and ``on_error`` is 'refuse' (the answer is
    replaced) or 'allow' (it passes)."""
    action: ResponseAction = "allow" if on_error == "allow" else "replace"
    level = taxonomy.levels[taxonomy.num_levels - 1 if action != "allow" else 0]
    risk_type = taxonomy.type_by_code(taxonomy.safe_type)
    return ResponseVerdict(
        harmful=False,
        harm_prob=0.0,
        level=LabelRef(id=level.id, code=level.code, name=level.name),
        type=LabelRef(id=risk_type.id, code=risk_type.code, name=risk_type.name),
        level_probs={},
        type_probs={},
        action=action,
        rule="on_error",
        replacement=policy.replacement.format(concept="an answer the guard could not judge")
        if action == "replace"
        else None,
        tokens_judged=tokens_judged,
        error=reason,
    )


def replacement_text(verdict: ResponseVerdict, policy: ResponsePolicy, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> str:
    """The text that stands for a flagged answer: the verdict's replacement, else (a 'block' verdict ended
    another way, e.g. by an adapter's ``on_block``) the type's or the policy's template for its type."""
    if verdict.replacement is not None:
        return verdict.replacement
    template = policy.rule_for(verdict.type.code).replacement or policy.replacement
    return template.format(concept=taxonomy.type_by_code(verdict.type.code).concept)
