"""The policy: from the head's probabilities to an action, in one tested function.

The paper takes the argmax of both heads and adds a hint whenever the level is above 0 and the type is not
'safe'. psaguard keeps that behaviour as the default but decides on calibrated probabilities:

* the acted-on level is the highest level ``L`` whose tail probability ``P(level >= L)`` reaches the
  type's ``threshold`` (0.5 by default, i.e. the median level, which for a confident head is the argmax);
* per-type rules switch a type off, raise its minimum level, or override actions, hints and refusals
  (the paper's "condition tuning" and controllability, without retraining).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from psaguard.categories.config import FIRE_AT, CustomCategory
from psaguard.decision import (
    ErrorAction,
    LevelRule,
    acted_level,
    check_rules_against,
    check_template,
    checked_templates,
)
from psaguard.errors import ConfigError
from psaguard.responses.policy import ResponsePolicy
from psaguard.taxonomy import DEFAULT_TAXONOMY, Taxonomy
from psaguard.verdict import Action, LabelRef, SafetyVerdict

__all__ = [
    "ACTION_SEVERITY",
    "DEFAULT_HINTS",
    "FALLBACK_REFUSAL",
    "NO_IMAGE_RULE",
    "GenerationOptions",
    "GuardPolicy",
    "Resolution",
    "TextOnlyAction",
    "TypeRule",
    "blocked_message",
    "decide",
    "decide_categories",
    "error_verdict",
    "fixed_verdict",
    "refusal_text",
    "resolve_action",
    "text_only_verdict",
    "worst_verdict",
]

# After the paper's hint table (condition.py / supplementary Fig. 6), with the literal
# "{REASON FOR REJECT}" placeholder of the official code replaced by the concept.
DEFAULT_HINTS: dict[int, str] = {
    1: "This image may contain risks of {concept}. Respond cautiously, do not engage with such content, "
    "and give positive guidance.",
    2: "This image contains {concept}. Answer with caution, do not engage with such content, guide the "
    "user positively, and refuse if necessary.",
    3: "This image contains serious {concept}. You must refuse and say: I'm sorry, but I can't help with {concept}.",
}
DEFAULT_REFUSAL = "I'm sorry, but I can't help with this request because it involves {concept}."
DEFAULT_LEVEL_ACTIONS: dict[int, Action] = {0: "allow", 1: "hint", 2: "hint", 3: "refuse"}


class TypeRule(LevelRule):
    """How the policy treats one risk type."""

    actions: dict[int, Action] = Field(default_factory=dict, description="Per-level action overrides.")
    hints: dict[int, str] = Field(default_factory=dict, description="Per-level hint overrides ({concept}).")
    refusal: str | None = Field(None, description="Refusal text override for this type ({concept}).")

    @field_validator("hints", "refusal")
    @classmethod
    def _templates_format(cls, value: Mapping[int, str] | str | None) -> Mapping[int, str] | str | None:
        return checked_templates(value)


class GuardPolicy(BaseModel):
    """Which action each (level, type) verdict triggers. Serializable; copy before changing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    level_actions: dict[int, Action] = Field(
        default_factory=lambda: dict(DEFAULT_LEVEL_ACTIONS),
        description="Action for each level id when no type rule overrides it; level 0 is always 'allow'.",
    )
    hints: dict[int, str] = Field(
        default_factory=lambda: dict(DEFAULT_HINTS),
        description="Hint template for each level id >= 1; '{concept}' is the type's concept phrase.",
    )
    refusal: str = Field(DEFAULT_REFUSAL, description="Refusal template; '{concept}' is the type's phrase.")
    types: dict[str, TypeRule] = Field(default_factory=dict, description="Rules by risk type code.")
    default_rule: TypeRule = Field(default_factory=TypeRule, description="Rule for types not in `types`.")
    on_error: ErrorAction = Field(
        "block",
        description="What to do when the guard cannot judge a request: 'block' raises a typed error "
        "(fail closed, the default), 'refuse' answers with the refusal, 'allow' fails open.",
    )
    response: ResponsePolicy = Field(
        default_factory=ResponsePolicy, description="Decisions on answers and the streaming monitor."
    )

    @field_validator("hints", "refusal")
    @classmethod
    def _templates_format(cls, value: Mapping[int, str] | str) -> Mapping[int, str] | str:
        return checked_templates(value)

    def validate_against(self, taxonomy: Taxonomy) -> GuardPolicy:
        """Check the policy against ``taxonomy``; raise :class:`ConfigError` naming the first problem.

        Every type code and level id must exist, every level above 0 needs an action, level 0 is always
        'allow', each rule's ``min_level`` must be a level, and every 'hint' action needs a hint template.
        """
        rules = {"default_rule": self.default_rule, **{f"types.{code}": rule for code, rule in self.types.items()}}
        hinted = set(self.hints) | {lv for rule in rules.values() for lv in rule.hints}
        check_rules_against(taxonomy, "policy", "", self.default_rule, self.types, self.level_actions, hinted)
        if missing := sorted(set(range(1, taxonomy.num_levels)) - set(self.level_actions)):
            raise ConfigError(f"level_actions lacks levels {missing}")
        for name, rule in rules.items():
            for level in range(1, taxonomy.num_levels):
                action = rule.actions.get(level, self.level_actions[level])
                if action == "hint" and not (rule.hints.get(level) or self.hints):
                    raise ConfigError(f"{name} gives level {level} a 'hint' action but no hint template exists")
        self.response.validate_against(taxonomy)
        return self

    def rule_for(self, type_code: str) -> TypeRule:
        """The rule of a type: its own, else the default."""
        return self.types.get(type_code, self.default_rule)


def decide(
    level_probs: Sequence[float],
    type_probs: Sequence[float],
    policy: GuardPolicy,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
    latency_ms: float = 0.0,
    *,
    categories: Sequence[CustomCategory] = (),
    custom_probs: Sequence[float] = (),
) -> SafetyVerdict:
    """Turn one request's level and type probabilities into a :class:`SafetyVerdict`.

    With custom ``categories`` (and their probabilities ``custom_probs``, in the same order), see
    :func:`decide_categories`.
    """
    risk_type, rule, level_id, fired = acted_level(level_probs, type_probs, policy.rule_for, taxonomy)
    action: Action = "allow"
    if fired is None:
        action = rule.actions.get(level_id, policy.level_actions[level_id])
        fired = f"type:{risk_type.code}/level:{taxonomy.levels[level_id].code}"

    level = taxonomy.levels[level_id]
    verdict = SafetyVerdict(
        level=LabelRef(id=level.id, code=level.code, name=level.name),
        type=LabelRef(id=risk_type.id, code=risk_type.code, name=risk_type.name),
        level_probs={lv.code: float(p) for lv, p in zip(taxonomy.levels, level_probs)},
        type_probs={t.code: float(p) for t, p in zip(taxonomy.types, type_probs)},
        action=action,
        rule=fired,
        **_texts(action, level_id, risk_type.concept, policy, rule),
        latency_ms=latency_ms,
    )
    return decide_categories(verdict, categories, custom_probs, policy, taxonomy) if categories else verdict


def decide_categories(
    verdict: SafetyVerdict,
    categories: Sequence[CustomCategory],
    probs: Sequence[float],
    policy: GuardPolicy,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
) -> SafetyVerdict:
    """The head's ``verdict`` with the custom categories' probabilities, overridden by a firing category.

    A category fires when its probability reaches :data:`~psaguard.categories.FIRE_AT`; it acts at its own
    level with its own action (else the policy's ``level_actions`` for that level) and the policy's hint and
    refusal templates for its concept. Of the firing categories the one with the most severe action, then the
    highest level, then the highest probability decides; it replaces the head's verdict unless that one is
    more severe (by action, then level), so a category never weakens what the head decided.
    """
    if len(probs) != len(categories):
        raise ValueError(f"got {len(probs)} probabilities for {len(categories)} custom categories")
    scores = {category.code: float(p) for category, p in zip(categories, probs)}
    fired = [
        (ACTION_SEVERITY[_category_action(category, policy)], category.level, p, index)
        for index, (category, p) in enumerate(zip(categories, probs))
        if p >= FIRE_AT
    ]
    head_rank = (ACTION_SEVERITY[verdict.action], verdict.level.id)
    if not fired or max(fired)[:2] < head_rank:
        return verdict.model_copy(update={"custom_scores": scores})
    index = max(fired)[3]
    category = categories[index]
    action = _category_action(category, policy)
    level = taxonomy.levels[category.level]
    return verdict.model_copy(
        update={
            "level": LabelRef(id=level.id, code=level.code, name=level.name),
            "type": LabelRef(id=taxonomy.num_types + index, code=category.code, name=category.name),
            "custom_scores": scores,
            "action": action,
            "rule": f"category:{category.code}/level:{level.code}",
            **_texts(action, level.id, category.concept, policy),
        }
    )


def _category_action(category: CustomCategory, policy: GuardPolicy) -> Action:
    return category.action or policy.level_actions[category.level]


def _texts(
    action: Action, level_id: int, concept: str, policy: GuardPolicy, rule: TypeRule | None = None
) -> dict[str, str | None]:
    """The verdict's hint and refusal for ``action``: the type rule's templates, else the policy's."""
    hint = refusal = None
    if action == "hint":
        own = rule.hints.get(level_id) if rule else None
        template = own or policy.hints.get(level_id) or policy.hints[max(policy.hints)]
        hint = template.format(concept=concept)
    elif action in ("refuse", "block"):
        refusal = ((rule.refusal if rule else None) or policy.refusal).format(concept=concept)
    return {"hint": hint, "refusal": refusal}


def error_verdict(reason: str, policy: GuardPolicy, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> SafetyVerdict:
    """The verdict used when the guard cannot judge and ``policy.on_error`` is 'refuse' or 'allow'."""
    return fixed_verdict(
        policy.on_error,
        "on_error",
        policy,
        taxonomy,
        level_id=taxonomy.num_levels - 1 if policy.on_error != "allow" else 0,
        concept="a request the guard could not judge",
        error=reason,
    )


def fixed_verdict(
    action: Action,
    rule: str,
    policy: GuardPolicy,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
    *,
    level_id: int = 0,
    concept: str = "this request",
    error: str | None = None,
) -> SafetyVerdict:
    """A verdict the head did not produce (no probabilities): errors, requests without an image.

    The type is the taxonomy's safe type; a refusing or blocking action carries the policy's refusal for
    ``concept``.
    """
    level = taxonomy.levels[level_id]
    risk_type = taxonomy.type_by_code(taxonomy.safe_type)
    return SafetyVerdict(
        level=LabelRef(id=level.id, code=level.code, name=level.name),
        type=LabelRef(id=risk_type.id, code=risk_type.code, name=risk_type.name),
        level_probs={},
        type_probs={},
        action=action,
        rule=rule,
        refusal=policy.refusal.format(concept=concept) if action in ("refuse", "block") else None,
        error=error,
    )


# ---------------------------------------------------------------------- from verdicts to what generation does
ACTION_SEVERITY: dict[str, int] = {"allow": 0, "hint": 1, "refuse": 2, "block": 3}
"""How strongly each action intervenes; the most severe verdict of a request's images decides."""

FALLBACK_REFUSAL = "I'm sorry, but I can't help with this request."
"""What a stopped request ends with when its verdict carries no refusal text."""


def worst_verdict(verdicts: Sequence[SafetyVerdict]) -> SafetyVerdict:
    """The verdict that decides a multi-image request: most severe action, then highest level; first on ties."""
    if not verdicts:
        raise ValueError("no verdicts to choose from")
    return max(verdicts, key=lambda v: (ACTION_SEVERITY[v.action], v.level.id))


def refusal_text(verdict: SafetyVerdict) -> str:
    """The text a stopped (refused or blocked) request ends with: the verdict's refusal, else the fallback."""
    return verdict.refusal or FALLBACK_REFUSAL


def blocked_message(verdict: SafetyVerdict, where: str = "request") -> str:
    """The message of :class:`~psaguard.errors.GuardBlocked` for a blocked request (``where``: which one)."""
    return f"{where} blocked by psaguard policy (rule {verdict.rule!r})"


class GenerationOptions(BaseModel):
    """How guarded generation words hints and refusals."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hint_template: str = Field(
        "\nSafe Hint: {hint}",
        description="Appended to the last turn's text for 'hint' actions; '{hint}' is the verdict's hint "
        "(the paper's 'Safe Hint:' line).",
    )
    refuse_with: Literal["text", "hint"] = Field(
        "text",
        description="'text' answers 'refuse' verdicts with the policy's refusal text without running the "
        "model; 'hint' runs the model with `refusal_hint` as the safety hint.",
    )
    refusal_hint: str = Field(
        "You must refuse and say: {refusal}",
        description="Hint used for 'refuse' verdicts when refuse_with='hint'; '{refusal}' is the refusal text.",
    )

    @field_validator("hint_template", "refusal_hint")
    @classmethod
    def _one_field(cls, template: str, info: Any) -> str:
        return check_template(template, "hint" if info.field_name == "hint_template" else "refusal")

    def hint_text(self, hint: str) -> str:
        """The text inserted into the prompt for a hint."""
        return self.hint_template.format(hint=hint)


@dataclass(frozen=True)
class Resolution:
    """How one deciding verdict is answered: with or without the model, and with which hint."""

    runs_model: bool
    hint: str | None
    text: str  # the answer when the model does not run


def resolve_action(verdict: SafetyVerdict, options: GenerationOptions, *, can_generate: bool = True) -> Resolution:
    """Map a deciding verdict's action to what generation does (block is raised by the caller)."""
    refusal = verdict.refusal or ""
    if verdict.action == "allow":
        return Resolution(runs_model=True, hint=None, text="")
    if verdict.action == "hint":
        return Resolution(runs_model=True, hint=verdict.hint, text="")
    if verdict.action == "refuse" and options.refuse_with == "hint" and can_generate:
        return Resolution(runs_model=True, hint=options.refusal_hint.format(refusal=refusal), text="")
    return Resolution(runs_model=False, hint=None, text="" if verdict.action == "block" else refusal)


TextOnlyAction = Literal["allow", "refuse", "block"]
"""What to do with a request that holds no image (the PSA-VLM head judges images, so it cannot judge it)."""

NO_IMAGE_RULE = "no_image"
"""The rule of verdicts for requests without an image."""


def text_only_verdict(
    action: TextOnlyAction, policy: GuardPolicy, taxonomy: Taxonomy = DEFAULT_TAXONOMY
) -> SafetyVerdict:
    """The verdict of a request without images: the action the caller chose for such requests."""
    return fixed_verdict(action, NO_IMAGE_RULE, policy, taxonomy, concept="content the image guard cannot check")
