"""``POST /v1/moderations``: OpenAI's moderation shape, with psaguard's verdict under the ``psaguard`` key.

Risk types map to category names: OpenAI's own name where a psaguard type has an equivalent
(:data:`OPENAI_CATEGORIES`), ``psaguard/<type code>`` otherwise. A category is flagged when the policy
intervenes (any action but 'allow') and it is the verdict's type; its score is the probability of that type
times the probability of a level above 'safe' (the two heads' outputs, taken as independent). OpenAI
categories psaguard does not judge are absent rather than reported as zero. A guard's custom categories
(added from examples) are listed as ``psaguard/<code>`` with their own probability as the score, flagged when
the category decided the verdict.

A conversation (a list of ``{"role", "content"}`` messages, psaguard's extension of OpenAI's input) whose last
turn is the assistant's is judged as an answer: the response head reads that turn with the images and text of
the turns before it (:meth:`Judge.judge_response`); ``flagged``, the categories and their scores come from the
answer's verdict (``psaguard_response``), and ``psaguard`` holds the request's verdict from the same vision pass.
A conversation ending with another turn is judged as one request, like a multimodal input.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from psaguard.conversation import judged_text
from psaguard.serving.admission import Ticket
from psaguard.serving.config import LimitsConfig
from psaguard.serving.inputs import ParsedInput, check_text, split_parts
from psaguard.serving.judging import Judge
from psaguard.serving.protocol import ApiError, ModerationMessage, ModerationRequest
from psaguard.taxonomy import Taxonomy
from psaguard.verdict import ResponseVerdict, SafetyVerdict

__all__ = ["OPENAI_CATEGORIES", "category_name", "moderate", "moderation_result", "response_moderation_result"]

OPENAI_CATEGORIES: dict[str, str] = {
    "illegal": "illicit",
    "insults": "harassment",
    "fairness": "hate",
}
"""psaguard risk type code -> OpenAI moderation category, where OpenAI has an equivalent."""


def category_name(type_code: str) -> str:
    """The moderation category of a risk type."""
    return OPENAI_CATEGORIES.get(type_code, f"psaguard/{type_code}")


def _categories(verdict: SafetyVerdict | ResponseVerdict, taxonomy: Taxonomy, input_types: list[str]) -> dict[str, Any]:
    """``flagged`` and the three category maps of one verdict (request or answer)."""
    risky = 1.0 - verdict.level_probs.get(taxonomy.levels[0].code, 1.0)
    categories, scores, applied = {}, {}, {}
    for risk_type in taxonomy.types:
        if risk_type.code == taxonomy.safe_type:
            continue
        name = category_name(risk_type.code)
        categories[name] = verdict.flagged and verdict.type.code == risk_type.code
        scores[name] = verdict.type_probs.get(risk_type.code, 0.0) * risky
        applied[name] = list(input_types)
    custom = verdict.custom_scores if isinstance(verdict, SafetyVerdict) else {}
    for code, probability in custom.items():  # custom categories (psaguard.categories)
        name = f"psaguard/{code}"
        categories[name] = verdict.flagged and verdict.type.code == code
        scores[name] = probability
        applied[name] = list(input_types)
    return {
        "flagged": verdict.flagged,
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": applied,
    }


def moderation_result(verdict: SafetyVerdict, taxonomy: Taxonomy, input_types: list[str]) -> dict[str, Any]:
    """One OpenAI moderation result; ``input_types`` are those the guard judged ('text', 'image')."""
    return {**_categories(verdict, taxonomy, input_types), "psaguard": verdict.model_dump(mode="json")}


def response_moderation_result(verdict: ResponseVerdict, taxonomy: Taxonomy) -> dict[str, Any]:
    """One OpenAI moderation result for an answer: flagged and categories from the answer's verdict (judged with
    its text and the request's images), ``psaguard`` the request's verdict, ``psaguard_response`` the answer's."""
    return {
        **_categories(verdict, taxonomy, ["text", "image"]),
        "psaguard": None if verdict.request is None else verdict.request.model_dump(mode="json"),
        "psaguard_response": verdict.model_dump(mode="json"),
    }


def _inputs(request: ModerationRequest, judge: Judge) -> list[ParsedInput]:
    limits = judge.config.limits
    if isinstance(request.input, list) and request.input and isinstance(request.input[0], ModerationMessage):
        return [_conversation_input(request.input, judge)]  # type: ignore[arg-type]
    if isinstance(request.input, str):
        return [split_parts(request.input, limits, "input")]
    if not request.input:
        raise ApiError(400, "input must not be empty", param="input")
    if all(isinstance(item, str) for item in request.input):
        return _string_inputs(request.input, limits)  # type: ignore[arg-type]
    if any(isinstance(item, str) for item in request.input):
        raise ApiError(400, "input mixes strings and content parts", param="input")
    return [split_parts(request.input, limits, "input")]  # one multimodal input, as OpenAI reads it


def _string_inputs(texts: list[str], limits: LimitsConfig) -> list[ParsedInput]:
    """A list of strings: one input each, at most ``limits.max_inputs``, their text together within the limit."""
    if len(texts) > limits.max_inputs:
        raise ApiError(400, f"{len(texts)} inputs exceed the limit of {limits.max_inputs}", code="too_many_inputs")
    parsed = [split_parts(text, limits, f"input[{index}]") for index, text in enumerate(texts)]
    check_text("".join(item.text for item in parsed), limits, "input")
    return parsed


@dataclass(frozen=True)
class _AnsweredInput(ParsedInput):
    """A conversation ending with the assistant's turn: the request (``text``, ``images``) and its ``answer``."""

    answer: str = ""


def _conversation_input(messages: list[ModerationMessage], judge: Judge) -> ParsedInput:
    """One conversation as one input: its text as the head reads it (every turn) and its images; the last
    turn, when it is the assistant's, is split off as the answer (which may hold no image)."""
    limits = judge.config.limits
    turns, images = [], []
    for index, message in enumerate(messages):
        parsed = split_parts(message.content, limits, f"input[{index}].content")
        turns.append({"role": message.role, "content": parsed.text})
        images += parsed.images
    if len(images) > limits.max_images:
        raise ApiError(400, f"{len(images)} images exceed the limit of {limits.max_images}", code="too_many_images")
    check_text(" ".join(turn["content"] for turn in turns), limits, "input")
    last = len(messages) - 1
    if messages[last].role != "assistant":
        return ParsedInput(judged_text(turns), images)
    if split_parts(messages[last].content, limits, f"input[{last}].content").images:
        raise ApiError(400, "the assistant's answer holds an image; only text answers are judged", param="input")
    if not judge.require_answer_checks():
        raise ApiError(
            400,
            "this server does not check answers (check_answers=False); send the conversation without the "
            "assistant's last turn to judge the request",
            code="answer_checks_off",
            param=f"input[{last}]",
        )
    judged_text(turns)  # a role outside the chat roles is a 400, whichever turn holds it
    return _AnsweredInput(judged_text(turns[:last]), images, turns[last]["content"])


async def moderate(request: ModerationRequest, judge: Judge, ticket: Ticket) -> dict[str, Any]:
    """The moderation response for ``request``; 4xx :class:`ApiError` for invalid or oversized input; images
    charged to ``ticket``."""
    taxonomy = judge.guard.config.taxonomy
    results = []
    for index, item in enumerate(_inputs(request, judge)):
        param = f"input[{index}].image_url"
        if isinstance(item, _AnsweredInput) and item.images:  # an answer without images follows on_text_only
            images = await judge.load_images(item.images, param, ticket)
            verdict = await judge.judge_response(images, item.text, item.answer)
            results.append(response_moderation_result(verdict, taxonomy))
            continue
        verdict = await judge.judge(item.images, item.text, param, ticket)
        judged = [*(["text"] if item.text else []), "image"] if item.images else []  # text alone is not judged
        results.append(moderation_result(verdict, taxonomy, judged))
    return {"id": f"modr-{uuid.uuid4().hex}", "model": request.model or judge.config.model_name, "results": results}
