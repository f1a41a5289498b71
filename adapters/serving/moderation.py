"""``POST /v1/moderations``: OpenAI's moderation shape, with psaguard's verdict under the ``psaguard`` key.

Risk types map to category names: OpenAI's own name where a psaguard type has an equivalent
(:data:`OPENAI_CATEGORIES`), ``psaguard/<type code>`` otherwise. A category is flagged when the policy
intervenes (any action but 'allow') and it is the verdict's type; its score is the probability of that type
times the probability of a level above 'safe' (the two heads' outputs, taken as independent). OpenAI
categories psaguard does not judge are absent rather than reported as zero. A guard's custom categories
(added from examples) are listed as ``psaguard/<code>`` with their own probability as the score, flagged when
the category decided the verdict.
"""

from __future__ import annotations

import uuid
from typing import Any

from psaguard.serving.admission import Ticket
from psaguard.serving.inputs import ParsedInput, check_text, split_parts
from psaguard.serving.judging import Judge
from psaguard.serving.protocol import ApiError, ModerationRequest
from psaguard.taxonomy import Taxonomy
from psaguard.verdict import SafetyVerdict

__all__ = ["OPENAI_CATEGORIES", "category_name", "moderate", "moderation_result"]

OPENAI_CATEGORIES: dict[str, str] = {
    "illegal": "illicit",
    "insults": "harassment",
    "fairness": "hate",
}
"""psaguard risk type code -> OpenAI moderation category, where OpenAI has an equivalent."""


def category_name(type_code: str) -> str:
    """The moderation category of a risk type."""
    return OPENAI_CATEGORIES.get(type_code, f"psaguard/{type_code}")


def moderation_result(verdict: SafetyVerdict, taxonomy: Taxonomy, input_types: list[str]) -> dict[str, Any]:
    """One OpenAI moderation result; ``input_types`` are those the guard judged ('text', 'image')."""
    risky = 1.0 - verdict.level_probs.get(taxonomy.levels[0].code, 1.0)
    categories, scores, applied = {}, {}, {}
    for risk_type in taxonomy.types:
        if risk_type.code == taxonomy.safe_type:
            continue
        name = category_name(risk_type.code)
        categories[name] = verdict.flagged and verdict.type.code == risk_type.code
        scores[name] = verdict.type_probs.get(risk_type.code, 0.0) * risky
        applied[name] = list(input_types)
    for code, probability in verdict.custom_scores.items():  # custom categories (psaguard.categories)
        name = f"psaguard/{code}"
        categories[name] = verdict.flagged and verdict.type.code == code
        scores[name] = probability
        applied[name] = list(input_types)
    return {
        "flagged": verdict.flagged,
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": applied,
        "psaguard": verdict.model_dump(mode="json"),
    }


def _inputs(request: ModerationRequest, judge: Judge) -> list[ParsedInput]:
    limits = judge.config.limits
    if isinstance(request.input, str):
        return [split_parts(request.input, limits, "input")]
    if not request.input:
        raise ApiError(400, "input must not be empty", param="input")
    if all(isinstance(item, str) for item in request.input):
        if len(request.input) > limits.max_inputs:
            raise ApiError(
                400, f"{len(request.input)} inputs exceed the limit of {limits.max_inputs}", code="too_many_inputs"
            )
        parsed = [split_parts(text, limits, f"input[{index}]") for index, text in enumerate(request.input)]
        check_text("".join(item.text for item in parsed), limits, "input")
        return parsed
    if any(isinstance(item, str) for item in request.input):
        raise ApiError(400, "input mixes strings and content parts", param="input")
    return [split_parts(request.input, limits, "input")]  # one multimodal input, as OpenAI reads it


async def moderate(request: ModerationRequest, judge: Judge, ticket: Ticket) -> dict[str, Any]:
    """The moderation response for ``request``; 4xx :class:`ApiError` for invalid or oversized input; images
    charged to ``ticket``."""
    taxonomy = judge.guard.config.taxonomy
    results = []
    for index, item in enumerate(_inputs(request, judge)):
        verdict = await judge.judge(item.images, item.text, f"input[{index}].image_url", ticket)
        judged = [*(["text"] if item.text else []), "image"] if item.images else []  # text alone is not judged
        results.append(moderation_result(verdict, taxonomy, judged))
    return {"id": f"modr-{uuid.uuid4().hex}", "model": request.model or judge.config.model_name, "results": results}
