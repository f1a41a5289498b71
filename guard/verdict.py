"""The typed result of judging one request."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

__all__ = ["Action", "LabelRef", "SafetyVerdict"]

Action = Literal["allow", "hint", "refuse", "block"]
"""What the policy does with a request: pass it, add a safety hint, answer with a refusal, or raise."""


class LabelRef(BaseModel):
    """A predicted label: class index, stable code and display name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int = Field(description="Class index in the head.")
    code: str = Field(description="Stable machine name.")
    name: str = Field(description="Human-readable name.")


class SafetyVerdict(BaseModel):
    """What the guard decided about one (image, prompt) request, and why.

    ``level`` is the level the policy acted on (see :class:`~psaguard.policy.GuardPolicy`), ``type`` the
    most probable risk type; the full calibrated probability vectors are kept so callers can apply their
    own thresholds. JSON-serializable with ``model_dump_json()``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    level: LabelRef = Field(description="Risk level the policy acted on.")
    type: LabelRef = Field(
        description="Most probable risk type, or the custom category that fired (its id follows the taxonomy's "
        "type ids, in the order the categories were added)."
    )
    level_probs: dict[str, float] = Field(description="Probability of each level, by level code.")
    type_probs: dict[str, float] = Field(description="Probability of each type, by type code.")
    custom_scores: dict[str, float] = Field(
        default_factory=dict,
        description="Probability of each custom category (psaguard.categories), by code; a category fires at 0.5.",
    )
    action: Action = Field(description="What the policy does with the request.")
    rule: str = Field(
        description="Which policy rule fired, e.g. 'type:privacy/level:2', or 'category:<code>/level:<level>' "
        "when a custom category decided."
    )
    hint: str | None = Field(None, description="Safety hint to add to the prompt when action is 'hint'.")
    refusal: str | None = Field(None, description="Refusal text when action is 'refuse' or 'block'.")
    error: str | None = Field(None, description="Why the guard could not judge, when the verdict is a fallback.")
    latency_ms: float = Field(0.0, ge=0, description="Wall time the guard spent on this request, in ms.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def flagged(self) -> bool:
        """True when the policy intervenes (any action but 'allow')."""
        return self.action != "allow"
