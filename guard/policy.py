"""The policy: from the head's probabilities to an action, in one tested function.

The paper takes the argmax of both heads and adds a hint whenever the level is above 0 and the type is not
'safe'. psaguard keeps that behaviour as the default but decides on calibrated probabilities:

* the acted-on level is the highest level ``L`` whose tail probability ``P(level >= L)`` reaches the
  type's ``threshold`` (0.5 by default, i.e. the median level, which for a confident head is the argmax);
* per-type rules switch a type off, raise its minimum level, or override actions, hints and refusals
  (the paper's "condition tuning" and controllability, without retraining).
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from psaguard.category_config import FIRE_AT, CustomCategory
from psaguard.errors import ConfigError
from psaguard.taxonomy import DEFAULT_TAXONOMY, Taxonomy
from psaguard.verdict import Action, LabelRef, ResponseAction, ResponseVerdict, RiskSource, SafetyVerdict

__all__ = [
    "ACTION_SEVERITY",
    "DEFAULT_HINTS",
    "DEFAULT_REPLACEMENT",
    "FALLBACK_REFUSAL",
    "NO_IMAGE_RULE",
    "ErrorAction",
    "GenerationOptions",
    "GuardPolicy",
    "Resolution",
    "ResponsePolicy",
    "ResponseRule",
    "TextOnlyAction",
    "TypeRule",
    "blocked_message",
    "check_template",
    "decide",
    "decide_categories",
    "decide_response",
    "error_verdict",
    "fixed_verdict",
    "refusal_text",
    "resolve_action",
    "response_error_verdict",
    "risk_source",
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
DEFAULT_REPLACEMENT = "I'm sorry, but I can't continue this answer because it involves {concept}."
"""What replaces an answer the response policy flags ('{concept}' is the type's phrase)."""

ErrorAction = Literal["block", "refuse", "allow"]
"""What to do when the guard cannot judge: raise (fail closed), refuse, or let the request through."""


def check_template(template: str, field: str) -> str:
    """Return ``template`` if it uses only the plain ``{field}`` replacement field; else raise ``ValueError``.

    Checked once, when a policy or options object is built, so that formatting a verdict's text can never
    fail or misbehave later: ``{concept.attr}`` and ``{hint.__class__.__mro__}`` walk object attributes,
    ``{0}`` fails, ``{concept:d}`` and ``{concept!z}`` raise on every verdict, and ``{concept:>1000000000}``
    allocates a gigabyte per verdict. Empty templates say nothing and are refused too.
    """
    if not template.strip():
        raise ValueError("templates must not be empty: an empty hint or refusal says nothing")
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"template {template!r} is not a valid format string: {err}") from err
    for _, name, spec, conversion in fields:
        if name is not None and (name != field or spec or conversion is not None):
            raise ValueError(
                f"template {template[:80]!r} may only use the plain '{{{field}}}' field "
                "(no attributes, indexes, conversions or format specs)"
            )
    return template


def _checked_templates(value: Mapping[int, str] | str | None) -> Mapping[int, str] | str | None:
    templates = () if value is None else value.values() if isinstance(value, Mapping) else (value,)
    for template in templates:
        check_template(template, "concept")
    return value


class TypeRule(BaseModel):
    """How the policy treats one risk type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="False turns this type's defence off: its requests are allowed.")
    threshold: float = Field(
        0.5, gt=0.0, le=1.0, description="Tail probability P(level >= L) needed to act at level L."
    )
    min_level: int = Field(1, ge=1, description="Lowest level at which the policy intervenes for this type.")
    actions: dict[int, Action] = Field(default_factory=dict, description="Per-level action overrides.")
    hints: dict[int, str] = Field(default_factory=dict, description="Per-level hint overrides ({concept}).")
    refusal: str | None = Field(None, description="Refusal text override for this type ({concept}).")

    @field_validator("hints", "refusal")
    @classmethod
    def _templates_format(cls, value: Mapping[int, str] | str | None) -> Mapping[int, str] | str | None:
        return _checked_templates(value)


class ResponseRule(BaseModel):
    """How the response policy treats one risk type of an answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="False lets answers of this type through.")
    threshold: float = Field(
        0.5, gt=0.0, le=1.0, description="Tail probability P(level >= L) of the answer needed to act at level L."
    )
    min_level: int = Field(1, ge=1, description="Lowest answer level at which the policy intervenes for this type.")
    actions: dict[int, ResponseAction] = Field(default_factory=dict, description="Per-level action overrides.")
    replacement: str | None = Field(None, description="Replacement text override for this type ({concept}).")

    @field_validator("replacement")
    @classmethod
    def _template_format(cls, value: str | None) -> str | None:
        return _checked_templates(value)  # type: ignore[return-value]


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
        unknown = sorted(set(self.types) - {t.code for t in taxonomy.types})
        if unknown:
            raise ConfigError(f"response policy names unknown risk types {unknown}")
        levels = set(range(taxonomy.num_levels))
        rules = {
            "response.default_rule": self.default_rule,
            **{f"response.types.{c}": r for c, r in self.types.items()},
        }
        named = set(self.level_actions) | {lv for r in rules.values() for lv in r.actions}
        if bad := sorted(named - levels):
            raise ConfigError(
                f"response policy names level ids {bad}, but the taxonomy has levels 0..{len(levels) - 1}"
            )
        for where, actions in (
            ("response.level_actions", self.level_actions),
            *((n, r.actions) for n, r in rules.items()),
        ):
            if actions.get(0, "allow") != "allow":
                raise ConfigError(f"{where} sets level 0 to {actions[0]!r}; level 0 means safe and is always 'allow'")
        for name, rule in rules.items():
            if rule.min_level >= taxonomy.num_levels:
                raise ConfigError(f"{name}.min_level is {rule.min_level}, but the highest level is {len(levels) - 1}")
        return self

    def rule_for(self, type_code: str) -> ResponseRule:
        """The rule of a type: its own, else the default."""
        return self.types.get(type_code, self.default_rule)

    def monitors(self, has_response_head: bool) -> bool:
        """Whether guarded generation runs the streaming monitor for a guard with or without a response head."""
        return has_response_head if self.monitor is None else self.monitor


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
        return _checked_templates(value)

    def validate_against(self, taxonomy: Taxonomy) -> GuardPolicy:
        """Check the policy against ``taxonomy``; raise :class:`ConfigError` naming the first problem.

        Every type code and level id must exist, every level above 0 needs an action, level 0 is always
        'allow', each rule's ``min_level`` must be a level, and every 'hint' action needs a hint template.
        """
        unknown = sorted(set(self.types) - {t.code for t in taxonomy.types})
        if unknown:
            raise ConfigError(f"policy names unknown risk types {unknown}; known: {[t.code for t in taxonomy.types]}")
        levels = set(range(taxonomy.num_levels))
        rules = {"default_rule": self.default_rule, **{f"types.{code}": rule for code, rule in self.types.items()}}
        named = set(self.level_actions) | set(self.hints)
        named |= {lv for r in rules.values() for lv in (*r.actions, *r.hints)}
        if bad := sorted(named - levels):
            raise ConfigError(f"policy names level ids {bad}, but the taxonomy has levels 0..{len(levels) - 1}")
        if missing := sorted(levels - {0} - set(self.level_actions)):
            raise ConfigError(f"level_actions lacks levels {missing}")
        for where, actions in (
            ("level_actions", self.level_actions),
            *((f"{n}.actions", r.actions) for n, r in rules.items()),
        ):
            if actions.get(0, "allow") != "allow":
                raise ConfigError(f"{where} sets level 0 to {actions[0]!r}; level 0 means safe and is always 'allow'")
        for name, rule in rules.items():
            if rule.min_level >= taxonomy.num_levels:
                top = taxonomy.num_levels - 1
                raise ConfigError(f"{name}.min_level is {rule.min_level}, but the highest level is {top}")
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
    risk_type, rule, level_id, fired = _acted_level(level_probs, type_probs, policy.rule_for, taxonomy)
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


def _acted_level(
    level_probs: Sequence[float], type_probs: Sequence[float], rule_for: Any, taxonomy: Taxonomy
) -> tuple[Any, Any, int, str | None]:
    """(type, its rule, acted-on level, the rule that let it through or None when the policy acts).

    Shared by the request and the response side: the most probable type, and the highest level whose tail
    probability reaches the type rule's threshold.
    """
    if len(level_probs) != taxonomy.num_levels or len(type_probs) != taxonomy.num_types:
        raise ValueError(
            f"got {len(level_probs)} level / {len(type_probs)} type probabilities for a taxonomy of "
            f"{taxonomy.num_levels} levels / {taxonomy.num_types} types"
        )
    type_id = max(range(len(type_probs)), key=type_probs.__getitem__)
    risk_type = taxonomy.types[type_id]
    rule = rule_for(risk_type.code)
    tail = _tail_probabilities(level_probs)
    level_id = max((lv for lv in range(1, len(tail)) if tail[lv] >= rule.threshold), default=0)
    if type_id == taxonomy.safe_type_id:
        return risk_type, rule, level_id, "safe_type"
    if not rule.enabled:
        return risk_type, rule, level_id, f"type:{risk_type.code}/disabled"
    if level_id == 0:
        return risk_type, rule, level_id, "safe_level"
    if level_id < rule.min_level:
        return risk_type, rule, level_id, f"type:{risk_type.code}/below_min_level:{rule.min_level}"
    return risk_type, rule, level_id, None


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
    risk_type, rule, level_id, fired = _acted_level(level_probs, type_probs, policy.rule_for, taxonomy)
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
    reason: str, policy: GuardPolicy, taxonomy: Taxonomy = DEFAULT_TAXONOMY, tokens_judged: int | None = None
) -> ResponseVerdict:
    """The answer verdict used when the guard cannot judge and ``policy.on_error`` is 'refuse' (the answer is
    replaced) or 'allow' (it passes)."""
    action: ResponseAction = "allow" if policy.on_error == "allow" else "replace"
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
        replacement=policy.response.replacement.format(concept="an answer the guard could not judge")
        if action == "replace"
        else None,
        tokens_judged=tokens_judged,
        error=reason,
    )


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


def _tail_probabilities(probs: Sequence[float]) -> list[float]:
    """``tail[L] = P(level >= L)``."""
    tail, running = [0.0] * len(probs), 0.0
    for lv in range(len(probs) - 1, -1, -1):
        running += float(probs[lv])
        tail[lv] = running
    return tail


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
