"""Chat conversations for guarded generation: normalizing prompts, the text the head judges, safety hints.

A prompt is either a user string or a Hugging Face chat conversation: a list of ``{"role", "content"}``
messages whose content is a string or a list of ``{"type": "image"}`` / ``{"type": "text", "text": ...}``
parts. Images are passed separately, in the order of the image parts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

from psaguard.errors import InvalidPromptError

__all__ = [
    "Conversation",
    "PromptInput",
    "count_image_parts",
    "judged_text",
    "to_conversation",
    "with_hint",
]

Conversation = list[dict[str, Any]]
"""A Hugging Face chat conversation (list of role/content messages)."""

PromptInput = Union[str, Sequence[Mapping[str, Any]]]
"""A user string or a chat conversation."""


def to_conversation(prompt: PromptInput, num_images: int) -> Conversation:
    """Return ``prompt`` as a validated conversation (a copy; the caller's object is never changed).

    A plain string becomes one user turn with ``num_images`` image parts before the text. A conversation must
    hold exactly ``num_images`` image parts.
    """
    if isinstance(prompt, str):
        content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": prompt}]
        return [{"role": "user", "content": content}]
    if not isinstance(prompt, Sequence) or not prompt:
        raise InvalidPromptError(
            f"prompt must be a string or a non-empty chat conversation, got {type(prompt).__name__}"
        )
    conversation = [_checked_message(index, message) for index, message in enumerate(prompt)]
    if not any(message["role"] == "user" for message in conversation):
        raise InvalidPromptError("the conversation has no user message")
    found = count_image_parts(conversation)
    if found != num_images:
        raise InvalidPromptError(f"the conversation has {found} image parts but {num_images} images were given")
    return conversation


def count_image_parts(conversation: Conversation) -> int:
    """Number of ``{"type": "image"}`` parts in a conversation."""
    return sum(
        1
        for message in conversation
        if not isinstance(message["content"], str)
        for part in message["content"]
        if part.get("type") == "image"
    )


def judged_text(conversation: Conversation) -> str:
    """The text the safety head reads: every user turn's text, in order.

    All user turns, not only the last, so a request split over several turns is judged as a whole; the
    head keeps the head and the tail of long prompts.
    """
    texts = [_message_text(message["content"]) for message in conversation if message["role"] == "user"]
    return "\n".join(text for text in texts if text)


def with_hint(conversation: Conversation, hint_text: str) -> Conversation:
    """A copy of ``conversation`` with ``hint_text`` appended to the last user turn (paper: after the question)."""
    hinted = [_copy_message(message) for message in conversation]
    last_user = next(m for m in reversed(hinted) if m["role"] == "user")
    content = last_user["content"]
    if isinstance(content, str):
        last_user["content"] = content + hint_text
        return hinted
    text_parts = [part for part in content if part.get("type") == "text"]
    if text_parts:
        text_parts[-1]["text"] = text_parts[-1].get("text", "") + hint_text
    else:
        content.append({"type": "text", "text": hint_text.lstrip()})
    return hinted


def _checked_message(index: int, message: Any) -> dict[str, Any]:
    if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
        raise InvalidPromptError(f"message {index} must be a mapping with 'role' and 'content'")
    if not isinstance(message["role"], str):
        raise InvalidPromptError(f"message {index} has a non-string role")
    content = message["content"]
    if isinstance(content, str):
        return dict(message)
    if not isinstance(content, Sequence):
        raise InvalidPromptError(f"message {index} content must be a string or a list of parts")
    for part in content:
        if not isinstance(part, Mapping) or part.get("type") not in ("image", "text"):
            raise InvalidPromptError(f"message {index} has a part that is not an image or text part: {part!r}")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise InvalidPromptError(f"message {index} has a text part without a string 'text'")
    return _copy_message(message)


def _copy_message(message: Mapping[str, Any]) -> dict[str, Any]:
    # Parts are flat dicts and only their strings are ever replaced, so copying one level deep is enough
    # (and avoids deep-copying image payloads some apps keep in their parts).
    content = message["content"]
    return {**message, "content": content if isinstance(content, str) else [dict(part) for part in content]}


def _message_text(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return " ".join(part["text"] for part in content if part.get("type") == "text")
