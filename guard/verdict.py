"""The typed results of judging one request and one answer."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

__all__ = ["Action", "LabelRef", "ResponseAction", "ResponseVerdict", "RiskSource", "SafetyVerdict"]

Action = Literal["allow", "hint", "refuse", "block"]
"""What the policy does with a request: pass it, add a safety hint, answer with a refusal, or raise."""

ResponseAction = Literal["allow", "replace", "block"]
"""What the response policy does with an answer: pass it, replace it with the policy's text, or raise."""

RiskSource = Literal["image", "request", "response"]
"""Which part of an exchange carries the risk: the image alone, the request (image + prompt), or the answer."""


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


class ResponseVerdict(BaseModel):
    """What the guard decided about one answer to an (image, prompt) request, and why.

    ``harmful`` is True when the response policy acted on a level above 0 with a risk type (``level`` and
    ``type`` say which); ``harm_prob`` is the calibrated ``P(level >= 1)`` of the response head.
    ``risk_source`` says where the risk sits when the guard can tell: ``'image'`` when the image judged
    with no text is already flagged, ``'request'`` when the image with the prompt is, ``'response'`` when
    only the answer is; None for an answer that is not harmful. JSON-serializable.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    harmful: bool = Field(description="True when the response policy found the answer harmful.")
    harm_prob: float = Field(ge=0.0, le=1.0, description="Calibrated P(level >= 1) of the response head.")
    level: LabelRef = Field(description="Risk level of the answer the policy acted on.")
    type: LabelRef = Field(description="Most probable risk type of the answer.")
    level_probs: dict[str, float] = Field(description="Probability of each level for the answer, by level code.")
    type_probs: dict[str, float] = Field(description="Probability of each type for the answer, by type code.")
    action: ResponseAction = Field(description="What the response policy does with the answer.")
    rule: str = Field(description="Which response-policy rule fired, e.g. 'type:privacy/level:2'.")
    replacement: str | None = Field(None, description="Text that replaces the answer when action is 'replace'.")
    risk_source: RiskSource | None = Field(
        None, description="Where the risk sits (image, request or response) for a harmful answer; else None."
    )
    request: SafetyVerdict | None = Field(
        None, description="The request-side verdict of the same (image, prompt), from the same vision pass."
    )
    tokens_judged: int | None = Field(
        None, ge=0, description="Answer tokens judged (streaming monitor); None for a whole answer given as text."
    )
    error: str | None = Field(None, description="Why the guard could not judge, when the verdict is a fallback.")
    latency_ms: float = Field(0.0, ge=0, description="Wall time the guard spent on this answer, in ms.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def flagged(self) -> bool:
        """True when the response policy intervenes (any action but 'allow')."""
        return self.action != "allow"
