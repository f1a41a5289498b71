"""OpenAI chat-completion objects, server-sent events, verdict headers, and chat messages as guard prompts."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from psaguard.conversation import Conversation
from psaguard.serving.config import LimitsConfig
from psaguard.serving.inputs import check_text, split_parts
from psaguard.serving.protocol import ApiError, ChatRequest, ImageUrl
from psaguard.verdict import ResponseVerdict, SafetyVerdict

__all__ = [
    "REFUSAL_FINISH_REASON",
    "ChatPrompt",
    "chat_prompt",
    "chunk",
    "completion",
    "completion_id",
    "generation_kwargs",
    "refusal_events",
    "sse",
    "sse_done",
]

REFUSAL_FINISH_REASON = "content_filter"
"""``finish_reason`` of an answer the guard replaced by its refusal (OpenAI's value for filtered content)."""


@dataclass(frozen=True)
class ChatPrompt:
    """A chat request as the guard sees it: a Hugging Face conversation and its images, in order."""

    conversation: Conversation
    images: list[ImageUrl]


def chat_prompt(request: ChatRequest, limits: LimitsConfig) -> ChatPrompt:
    """The conversation (``{"type": "image"}`` parts where the images were) and image references, or a 400."""
    conversation: Conversation = []
    images: list[ImageUrl] = []
    for index, message in enumerate(request.messages):
        parsed = split_parts(message.content, limits, f"messages[{index}].content")
        images += parsed.images
        if isinstance(message.content, list):
            content: str | list[dict[str, Any]] = [
                {"type": "image"} if part.type == "image_url" else {"type": "text", "text": part.text}
                for part in message.content
            ]
        else:
            content = parsed.text
        conversation.append({"role": message.role, "content": content})
    if len(images) > limits.max_images:
        raise ApiError(400, f"{len(images)} images exceed the limit of {limits.max_images}", code="too_many_images")
    check_text(" ".join(_texts(conversation)), limits, "messages")
    return ChatPrompt(conversation, images)


def _texts(conversation: Conversation) -> list[str]:
    return [
        message["content"] if isinstance(message["content"], str) else part.get("text", "")
        for message in conversation
        for part in ([None] if isinstance(message["content"], str) else message["content"])
    ]


def generation_kwargs(request: ChatRequest, limits: LimitsConfig) -> dict[str, Any]:
    """``model.generate`` arguments: the token cap (bounded by the server's), greedy unless temperature > 0."""
    wanted = request.max_completion_tokens or request.max_tokens or limits.max_new_tokens
    kwargs: dict[str, Any] = {"max_new_tokens": min(wanted, limits.max_new_tokens)}
    if request.temperature:
        kwargs.update(do_sample=True, temperature=request.temperature, top_p=request.top_p or 1.0)
    else:
        kwargs["do_sample"] = False
    return kwargs


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion(
    *,
    text: str,
    model: str,
    finish_reason: str,
    verdict: SafetyVerdict,
    response_verdict: ResponseVerdict | None = None,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
) -> dict[str, Any]:
    """A ``chat.completion`` object carrying the verdict under ``psaguard`` (and the answer's verdict, when it
    was judged, under ``psaguard_response``)."""
    body = {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "psaguard": verdict.model_dump(mode="json"),
    }
    if response_verdict is not None:
        body["psaguard_response"] = response_verdict.model_dump(mode="json")
    return body


def chunk(
    id: str,
    model: str,
    *,
    content: str | None = None,
    role: str | None = None,
    finish_reason: str | None = None,
    verdict: SafetyVerdict | None = None,
    response_verdict: ResponseVerdict | None = None,
) -> dict[str, Any]:
    """A ``chat.completion.chunk`` object; the first chunk of a stream carries the verdict, the last one the
    answer's verdict when it was judged."""
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    body: dict[str, Any] = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }
    if verdict is not None:
        body["psaguard"] = verdict.model_dump(mode="json")
    if response_verdict is not None:
        body["psaguard_response"] = response_verdict.model_dump(mode="json")
    return body


def sse(data: dict[str, Any]) -> bytes:
    """One server-sent event."""
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def sse_done() -> bytes:
    return b"data: [DONE]\n\n"


async def refusal_events(model: str, text: str, verdict: SafetyVerdict) -> AsyncIterator[bytes]:
    """A whole refused answer as a stream: role and verdict, the refusal text, the end."""
    stream_id = completion_id()
    yield sse(chunk(stream_id, model, role="assistant", content="", verdict=verdict))
    yield sse(chunk(stream_id, model, content=text))
    yield sse(chunk(stream_id, model, finish_reason=REFUSAL_FINISH_REASON))
    yield sse_done()
