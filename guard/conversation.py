"""Chat conversations for guarded generation: normalizing prompts, the text the head judges, safety hints.

A prompt is either a user string or a Hugging Face chat conversation: a list of ``{"role", "content"}``
messages whose content is a string or a list of ``{"type": "image"}`` / ``{"type": "text", "text": ...}``
parts. Images are passed separately, in the order of the image parts.

The chat template renders every turn, so the head judges the text of every turn the model will read:
system, user, assistant and tool turns alike, because the guard cannot know who wrote them (a client may
send its own "system" or "assistant" turns). A caller that wrote a turn itself (its own system prompt) can
mark it ``"psaguard_trusted": True``; only such turns are left out of the judged text. Roles other than
:data:`ROLES` are refused (``"User"``, ``"user "``: a template may render them, but the guard would not
know how to read them). The real safety hint is appended to the last turn, so it is the last thing the
model reads before it answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

from psaguard.errors import InvalidPromptError

__all__ = [
    "ROLES",
    "TRUSTED_KEY",
    "Conversation",
    "PromptInput",
    "check_text",
    "count_image_parts",
    "judged_text",
    "to_conversation",
    "with_hint",
]

Conversation = list[dict[str, Any]]
"""A Hugging Face chat conversation (list of role/content messages)."""

PromptInput = Union[str, Sequence[Mapping[str, Any]]]
"""A user string or a chat conversation."""

ROLES = frozenset({"system", "user", "assistant", "tool"})
"""Roles a conversation may use; any other (including other spellings of these) is refused."""

TRUSTED_KEY = "psaguard_trusted"
"""Message key a caller sets to True on a turn it wrote itself (its system prompt): that turn is not judged."""


def to_conversation(prompt: PromptInput, num_images: int) -> Conversation:
    """Return ``prompt`` as a validated conversation (a copy; the caller's object is never changed).

    A plain string becomes one user turn with ``num_images`` image parts before the text. A conversation must
    hold exactly ``num_images`` image parts.
    """
    if isinstance(prompt, str):
        check_text(prompt, "the prompt")
        content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": prompt}]
        return [{"role": "user", "content": content}]
    if not isinstance(prompt, Sequence) or not prompt:
        raise InvalidPromptError(
            f"prompt must be a string or a non-empty chat conversation, got {type(prompt).__name__}"
        )
    conversation = [_checked_message(index, message) for index, message in enumerate(prompt)]
    if not any(message["role"] == "user" for message in conversation):
        raise InvalidPromptError("the conversation has no user message")
    if conversation[-1]["role"] == "assistant":
        raise InvalidPromptError(
            "the conversation ends with an assistant turn; guarded generation answers a user or tool turn "
            "(a trailing assistant turn would come after the safety hint)"
        )
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
    """The text the safety head reads: the text of every turn not marked trusted, in order.

    Every role, not only the user's, because the model reads every turn; all turns, not only the last, so a
    request split over several turns is judged as a whole (the head keeps the head and the tail of long
    prompts). Raises :class:`InvalidPromptError` for a role outside :data:`ROLES`.
    """
    for index, message in enumerate(conversation):
        _check_role(index, message.get("role"))
    texts = [_message_text(message["content"]) for message in conversation if message.get(TRUSTED_KEY) is not True]
    return "\n".join(text for text in texts if text)


def check_text(text: str, what: str) -> None:
    """Raise :class:`InvalidPromptError` if ``text`` holds lone surrogates, which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidPromptError(
            f"{what} holds a lone surrogate at index {err.start}; it is not valid Unicode"
        ) from err


def with_hint(conversation: Conversation, hint_text: str) -> Conversation:
    """A copy of ``conversation`` with ``hint_text`` appended to its last turn (paper: after the question).

    The last turn whatever its role, so that no turn the model reads comes after the real hint; trailing
    assistant turns are a training example's answers, so the hint goes to the turn before them (guarded
    generation refuses a conversation that ends with an assistant turn, see :func:`to_conversation`).
    """
    hinted = [_copy_message(message) for message in conversation]
    index = len(hinted) - 1
    while index > 0 and hinted[index]["role"] == "assistant":
        index -= 1
    last = hinted[index]
    content = last["content"]
    if isinstance(content, str):
        last["content"] = content + hint_text
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
    _check_role(index, message["role"])
    content = message["content"]
    if isinstance(content, str):
        check_text(content, f"message {index}")
        return dict(message)
    if not isinstance(content, Sequence):
        raise InvalidPromptError(f"message {index} content must be a string or a list of parts")
    for part in content:
        _check_part(index, part)
    return _copy_message(message)


def _check_part(index: int, part: Any) -> None:
    """A part of message ``index``: an image part, or a text part with checked string ``text``."""
    if not isinstance(part, Mapping) or part.get("type") not in ("image", "text"):
        raise InvalidPromptError(f"message {index} has a part that is not an image or text part: {part!r}")
    if part["type"] == "image":
        return
    if not isinstance(part.get("text"), str):
        raise InvalidPromptError(f"message {index} has a text part without a string 'text'")
    check_text(part["text"], f"message {index}")


def _check_role(index: int, role: Any) -> None:
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidPromptError(
            f"message {index} has role {str(role)[:40]!r}; roles must be one of {sorted(ROLES)} (exact spelling)"
        )


def _copy_message(message: Mapping[str, Any]) -> dict[str, Any]:
    # Parts are flat dicts and only their strings are ever replaced, so copying one level deep is enough
    # (and avoids deep-copying image payloads some apps keep in their parts).
    content = message["content"]
    return {**message, "content": content if isinstance(content, str) else [dict(part) for part in content]}


def _message_text(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return " ".join(part["text"] for part in content if part.get("type") == "text")
