"""The decision rule the request and the response side share: the most probable type, the highest level whose
tail probability ``P(level >= L)`` reaches the type rule's threshold, and which rule lets a verdict through;
and the check of the text templates policies carry."""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from psaguard.errors import ConfigError
from psaguard.taxonomy import RiskType, Taxonomy

__all__ = [
    "ErrorAction",
    "LevelRule",
    "acted_level",
    "check_rules_against",
    "check_template",
    "checked_templates",
    "tail_probabilities",
]

ErrorAction = Literal["block", "refuse", "allow"]
"""What to do when the guard cannot judge: raise (fail closed), refuse, or let the request through."""


class LevelRule(BaseModel):
    """What a type rule of either side holds for :func:`acted_level`: whether it acts, the tail probability it
    needs, the lowest level it acts at, and per-level action overrides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="False turns this type's defence off: it is let through.")
    threshold: float = Field(
        0.5, gt=0.0, le=1.0, description="Tail probability P(level >= L) needed to act at level L."
    )
    min_level: int = Field(1, ge=1, description="Lowest level at which the policy intervenes for this type.")
    actions: dict[int, str] = Field(default_factory=dict, description="Per-level action overrides.")


def check_rules_against(
    taxonomy: Taxonomy,
    who: str,
    prefix: str,
    default_rule: LevelRule,
    types: Mapping[str, LevelRule],
    level_actions: Mapping[int, str],
    named_levels: set[int],
) -> None:
    """The checks both policies make against ``taxonomy``: type codes exist, every level id named (in
    ``level_actions``, the rules' actions and ``named_levels``) exists, level 0 is always 'allow', and each
    rule's ``min_level`` is a level. Errors name the policy ``who`` and the field under ``prefix``."""
    known = [t.code for t in taxonomy.types]
    if unknown := sorted(set(types) - set(known)):
        raise ConfigError(f"{who} names unknown risk types {unknown}; known: {known}")
    rules = {f"{prefix}default_rule": default_rule, **{f"{prefix}types.{code}": r for code, r in types.items()}}
    levels = set(range(taxonomy.num_levels))
    named = set(level_actions) | named_levels | {lv for rule in rules.values() for lv in rule.actions}
    if bad := sorted(named - levels):
        raise ConfigError(f"{who} names level ids {bad}, but the taxonomy has levels 0..{len(levels) - 1}")
    _check_level_zero_allows(
        {f"{prefix}level_actions": level_actions, **{f"{n}.actions": r.actions for n, r in rules.items()}}
    )
    for name, rule in rules.items():
        if rule.min_level >= taxonomy.num_levels:
            raise ConfigError(f"{name}.min_level is {rule.min_level}, but the highest level is {len(levels) - 1}")


def _check_level_zero_allows(actions_by_field: Mapping[str, Mapping[int, str]]) -> None:
    """Level 0 (safe) is 'allow' in every action table, named by its field."""
    for where, actions in actions_by_field.items():
        if actions.get(0, "allow") != "allow":
            raise ConfigError(f"{where} sets level 0 to {actions[0]!r}; level 0 means safe and is always 'allow'")


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


def checked_templates(value: Mapping[int, str] | str | None) -> Mapping[int, str] | str | None:
    templates = () if value is None else value.values() if isinstance(value, Mapping) else (value,)
    for template in templates:
        check_template(template, "concept")
    return value


def acted_level(
    level_probs: Sequence[float],
    type_probs: Sequence[float],
    rule_for: Callable[[str], LevelRule],
    taxonomy: Taxonomy,
) -> tuple[RiskType, LevelRule, int, str | None]:
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
    tail = tail_probabilities(level_probs)
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


def tail_probabilities(probs: Sequence[float]) -> list[float]:
    """``tail[L] = P(level >= L)``."""
    tail, running = [0.0] * len(probs), 0.0
    for lv in range(len(probs) - 1, -1, -1):
        running += float(probs[lv])
        tail[lv] = running
    return tail
