"""From LangChain inputs (messages, prompt values, dicts) to what the guard judges.

Image content blocks are decoded without any network access: base64 data URLs and base64 blocks become
bytes, ``file://`` URLs and plain paths become local paths, and remote (``http(s)://``) URLs or provider
file ids raise :class:`~psaguard.errors.RemoteImageError` so that nothing reaches a model unjudged (fail
closed). Read: LangChain's v1 standard blocks (``{"type": "image", "base64" | "url" | "file_id": ...}``) and
the older ``source_type`` blocks, OpenAI's ``image_url``, ``input_image`` and ``image_file``, Anthropic's
``{"type": "image", "source": {...}}`` and ``media`` blocks with an ``image/*`` MIME type.

Every block is either text, an image the guard judges, a LangChain v1 block that cannot show the model an
image (tool calls, ...: passed through unjudged), or refused with a typed error: audio, video and file blocks,
and any block type not listed here (``"Image"``, ``"tool_use"``, ...), are refused rather than dropped, because
a dropped block may still reach the model behind the guard.

A block holding more than one image payload (``base64`` and ``url``, ``source`` and ``url``, ``data`` and
``base64``, an ``image_url`` with a second payload, ...) is refused with
:class:`~psaguard.errors.InvalidImageError`: the guard would judge one payload while a provider's converter
may send the model the other (langchain-core's OpenAI converter reads ``url`` before ``base64``). Text blocks
holding an image payload are refused the same way.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import ParseResult, urlparse
from urllib.request import url2pathname

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages.utils import convert_to_messages
from langchain_core.prompt_values import PromptValue

from psaguard.conversation import judged_text
from psaguard.errors import InvalidImageError, InvalidInputError, RemoteImageError
from psaguard.request import GuardRequest

__all__ = [
    "IMAGE_BLOCK_TYPES",
    "IMAGE_PAYLOAD_KEYS",
    "PASS_THROUGH_BLOCK_TYPES",
    "TEXT_BLOCK_TYPES",
    "GuardRequest",
    "decode_image_block",
    "request_from_input",
    "request_from_messages",
]

IMAGE_BLOCK_TYPES = frozenset({"image", "image_url", "input_image", "image_file", "media"})
"""Content block types that may hold an image; each is judged or refused, never dropped."""

TEXT_BLOCK_TYPES = frozenset({"text", "input_text", "output_text", "reasoning", "refusal"})
"""Content block types read as text and judged (OpenAI's Responses API names its text blocks input_text/output_text;
LangChain v1 AI turns carry ``reasoning`` and ``refusal`` blocks)."""

PASS_THROUGH_BLOCK_TYPES = frozenset(
    {
        "citation",
        "invalid_tool_call",
        "non_standard",
        "server_tool_call",
        "server_tool_call_chunk",
        "server_tool_result",
        "tool_call",
        "tool_call_chunk",
    }
)
"""LangChain v1 standard block types that cannot show the model an image: passed through without being judged.
``non_standard`` and ``server_tool_result`` blocks are refused when anything inside them looks like media."""

IMAGE_PAYLOAD_KEYS = ("base64", "data", "url", "source", "image_url", "file_id", "file_uri")
"""Fields of a content block that can hold an image; an image block may set one of them, a text block none."""

_KNOWN_BLOCK_TYPES = TEXT_BLOCK_TYPES | IMAGE_BLOCK_TYPES | PASS_THROUGH_BLOCK_TYPES
# The text field of each text block type.
_TEXT_FIELDS = {"reasoning": "reasoning", "refusal": "refusal"}
# The field a v0 block's ``source_type`` names as its payload.
_SOURCE_TYPE_FIELDS = {"base64": "data", "url": "url", "id": "id"}
# Pass-through blocks holding provider payloads, searched for media; tool call arguments are text to the model.
_SCANNED_BLOCK_TYPES = frozenset({"non_standard", "server_tool_result"})
# Inside such a block: keys and MIME prefixes that mean media; nesting deeper than this is refused.
_MEDIA_KEYS = frozenset({"base64", "image_url", "file_uri", "input_image", "image_file"})
_MEDIA_MIME_PREFIXES = ("image/", "video/", "audio/")
_MAX_NESTING = 32

# Media the guard cannot judge: letting them through unjudged would fail open.
_UNJUDGEABLE_BLOCKS = frozenset({"audio", "input_audio", "video", "file"})
_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)$", re.DOTALL)
_ROLES: dict[type[BaseMessage], str] = {
    HumanMessage: "user",
    AIMessage: "assistant",
    SystemMessage: "system",
    ToolMessage: "tool",
}


def request_from_input(value: Any, *, allow_local_files: bool = True) -> GuardRequest:
    """Build a :class:`GuardRequest` from any input a guarded LangChain runnable accepts.

    Accepted: a dict ``{"image": one image or a list, "prompt": str}``, a string, a ``PromptValue``, or a
    sequence of messages (``BaseMessage``, ``(role, content)`` tuples or message dicts).
    """
    if isinstance(value, Mapping) and "prompt" in value:
        return _request_from_dict(value)
    if isinstance(value, str):
        return request_from_messages([HumanMessage(content=value)], allow_local_files=allow_local_files)
    if isinstance(value, PromptValue):
        return request_from_messages(value.to_messages(), allow_local_files=allow_local_files)
    if isinstance(value, Sequence):
        try:
            messages = convert_to_messages(value)
        except (ValueError, TypeError, NotImplementedError) as err:
            raise InvalidInputError(f"cannot read the input as chat messages: {err}") from err
        return request_from_messages(messages, allow_local_files=allow_local_files)
    raise InvalidInputError(
        f"unsupported guard input of type {type(value).__name__}; pass a dict with 'image' and 'prompt', "
        "a string, a PromptValue or a list of messages"
    )


def request_from_messages(messages: Sequence[BaseMessage], *, allow_local_files: bool = True) -> GuardRequest:
    """Collect the images and the text of every message (the model reads every turn)."""
    images: list[Any] = []
    conversation: list[dict[str, Any]] = []
    for message in messages:
        parts: list[dict[str, Any]] = []
        for block in _blocks(message.content):
            image = decode_image_block(block, allow_local_files=allow_local_files)
            if image is not None:
                images.append(image)
                parts.append({"type": "image"})
            elif isinstance(block, Mapping) and block.get("type") in PASS_THROUGH_BLOCK_TYPES:
                continue  # reaches a wrapped model unchanged; nothing in it is an image or judged text
            else:
                parts.append({"type": "text", "text": _block_text(block)})
        conversation.append({"role": _role(message), "content": parts})
    # The same text guarded generation judges, so every adapter gives the same verdict for the same messages.
    return GuardRequest(images=tuple(images), prompt=judged_text(conversation), conversation=tuple(conversation))


def decode_image_block(block: Any, *, allow_local_files: bool = True) -> Any | None:
    """The image a content block holds (bytes or a path), or None when the block is text.

    Raises :class:`~psaguard.errors.RemoteImageError` for remote URLs and provider file ids,
    :class:`~psaguard.errors.InvalidImageError` for malformed image blocks and blocks holding more than one
    image payload, and
    :class:`~psaguard.errors.InvalidInputError` for audio, video or file blocks the guard cannot judge and
    for block types it does not know (see the module docstring).
    """
    kind = _block_type(block)
    if kind is None:
        return None
    if kind not in IMAGE_BLOCK_TYPES:
        _check_non_image_block(kind, block)
        return None
    payload = _single_payload(block)
    if kind == "image_file":
        raise RemoteImageError("image_file blocks name provider files that cannot be judged locally; pass the bytes")
    if payload in ("file_id", "file_uri", "id"):
        raise RemoteImageError("image blocks holding provider file ids cannot be judged locally; pass the bytes")
    if kind in ("image_url", "input_image"):
        return _from_image_url(block.get("image_url"), allow_local_files)
    if kind == "media":
        return _from_media(block)
    return _from_payload(block, payload, allow_local_files)


# ---------------------------------------------------------------------------------------------- helpers
def _block_type(block: Any) -> str | None:
    """The type of a content block; None for a plain string (text)."""
    if isinstance(block, str):
        return None
    if not isinstance(block, Mapping):
        raise InvalidInputError(f"content block of type {type(block).__name__} is neither text nor a mapping")
    kind = block.get("type")
    if not isinstance(kind, str):
        raise InvalidInputError(f"content block 'type' must be a string, got {type(kind).__name__}")
    return kind


def _check_non_image_block(kind: str, block: Mapping[str, Any]) -> None:
    """Refuse a block that is not an image block unless it is text or passes through holding no media."""
    if kind in TEXT_BLOCK_TYPES:
        if payloads := _payloads(block, IMAGE_PAYLOAD_KEYS):
            raise InvalidInputError(f"{kind!r} content block also holds an image payload {payloads}; refused")
        return
    if kind in PASS_THROUGH_BLOCK_TYPES:
        if kind in _SCANNED_BLOCK_TYPES:
            _check_holds_no_media(kind, block)
        return
    if kind in _UNJUDGEABLE_BLOCKS:
        raise InvalidInputError(f"the guard cannot judge {kind!r} content blocks; remove them or judge them elsewhere")
    raise InvalidInputError(
        f"unknown content block type {str(kind)[:40]!r}; the guard refuses blocks it cannot read, since the "
        f"model might still see them (known: {sorted(_KNOWN_BLOCK_TYPES)})"
    )


def _from_image_url(target: Any, allow_local_files: bool) -> bytes | Path:
    """OpenAI's ``image_url`` field: a URL, or ``{"url": ...}`` holding one payload."""
    if isinstance(target, Mapping):
        _single_payload(target, where="the 'image_url' of an image block")
        target = target.get("url")
    return _from_url(target, allow_local_files)


def _from_payload(block: Mapping[str, Any], payload: str | None, allow_local_files: bool) -> bytes | Path:
    """The image of an ``image`` block from its one payload field (``source``, ``base64``/``data``, ``url``)."""
    if payload == "source":
        return _from_source(block["source"], allow_local_files)
    if payload == "base64" or (payload == "data" and block.get("source_type") == "base64"):
        return _from_base64(block[payload])
    if payload == "url":
        return _from_url(block["url"], allow_local_files)
    raise InvalidImageError(f"image block has no 'base64' or 'url' field: keys {sorted(block)}")


def _request_from_dict(value: Mapping[str, Any]) -> GuardRequest:
    prompt = value["prompt"]
    if not isinstance(prompt, str):
        raise InvalidInputError(f"'prompt' must be a string, got {type(prompt).__name__}")
    image = value.get("image")
    images = tuple(image) if isinstance(image, (list, tuple)) else (() if image is None else (image,))
    content = [*({"type": "image"} for _ in images), {"type": "text", "text": prompt}]
    return GuardRequest(images=images, prompt=prompt, conversation=({"role": "user", "content": content},))


def _blocks(content: str | list[Any]) -> list[Any]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return list(content)


def _block_text(block: str | Mapping[str, Any]) -> str:
    """The judged text of a block :func:`decode_image_block` found to hold no image ("" for tool calls ...)."""
    if isinstance(block, str):
        return block
    kind = block.get("type")
    field = _TEXT_FIELDS.get(kind, "text")
    text = block.get(field, "" if field != "text" else None)  # reasoning text is optional in LangChain v1
    if not isinstance(text, str):
        raise InvalidInputError(f"{kind!r} content block has no string {field!r}")
    return text


def _payloads(block: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    """The keys among ``keys`` that ``block`` sets (to anything but None), and image payloads in its ``extras``.

    LangChain keeps a v0 block's unknown keys in ``extras`` when it converts the block to v1, so a second
    payload may arrive there.
    """
    found = [key for key in keys if block.get(key) is not None]
    extras = block.get("extras")
    if isinstance(extras, Mapping):
        found += [f"extras.{key}" for key in IMAGE_PAYLOAD_KEYS if extras.get(key) is not None]
    return found


def _single_payload(block: Mapping[str, Any], where: str = "an image block") -> str | None:
    """The one image payload field of ``block`` (None if it has none); more than one is refused.

    A provider's converter may read a different field than the guard, so a block with two payloads could be
    judged on one image and sent with the other. A v0 block's ``source_type`` must name its one payload.
    """
    source_type = block.get("source_type")
    keys = (*IMAGE_PAYLOAD_KEYS, "id") if source_type is not None else IMAGE_PAYLOAD_KEYS
    found = _payloads(block, keys)
    if len(found) > 1:
        raise InvalidImageError(
            f"{where} holds {len(found)} image payloads {found}; one is allowed, since the model could be sent "
            "a different one than the guard judged"
        )
    expected = _SOURCE_TYPE_FIELDS.get(source_type) if isinstance(source_type, str) else None
    if source_type is not None and found != [expected]:
        raise InvalidImageError(
            f"{where} has source_type {str(source_type)[:40]!r} but holds {found or 'no payload'}; expected "
            f"source_type 'base64' with 'data', 'url' with 'url' or 'id' with 'id'"
        )
    return found[0] if found else None


def _check_holds_no_media(kind: str, block: Mapping[str, Any]) -> None:
    """Refuse a pass-through block with anything inside that may be media (an image the guard did not judge)."""
    stack: list[tuple[Any, int]] = [(value, 1) for key, value in block.items() if key != "type"]
    while stack:
        value, depth = stack.pop()
        if depth > _MAX_NESTING:
            raise InvalidInputError(f"{kind!r} content block is nested deeper than {_MAX_NESTING} levels; refused")
        stack.extend((inner, depth + 1) for inner in _checked_children(kind, value))


def _checked_children(kind: str, value: Any) -> Iterable[Any]:
    """The values nested in ``value`` (a value inside a ``kind`` block), once ``value`` is found to be no media."""
    if isinstance(value, str):
        if value[:5].lower() == "data:":
            raise InvalidInputError(f"{kind!r} content block holds a data URL the guard cannot judge; refused")
        return ()
    if isinstance(value, (bytes, bytearray)):
        raise InvalidInputError(f"{kind!r} content block holds raw bytes the guard cannot judge; refused")
    if isinstance(value, Mapping):
        if _is_media_mapping(value):
            raise InvalidInputError(f"{kind!r} content block holds media the guard cannot judge; refused")
        return value.values()
    return value if isinstance(value, (list, tuple)) else ()


def _is_media_mapping(value: Mapping[str, Any]) -> bool:
    """Whether a mapping inside a pass-through block looks like media: a media MIME type, block type or key."""
    mime = value.get("mime_type", value.get("media_type"))
    media_type = isinstance(mime, str) and mime.lower().startswith(_MEDIA_MIME_PREFIXES)
    inner_type = value.get("type")
    media_block = isinstance(inner_type, str) and inner_type in IMAGE_BLOCK_TYPES | _UNJUDGEABLE_BLOCKS
    return media_block or media_type or bool(_MEDIA_KEYS & set(value))


def _from_source(source: Any, allow_local_files: bool) -> bytes | Path:
    """Anthropic's ``{"type": "image", "source": {"type": "base64" | "url" | "file", ...}}``."""
    if not isinstance(source, Mapping):
        raise InvalidImageError(f"an image block's 'source' must be a mapping, got {type(source).__name__}")
    _single_payload(source, where="the 'source' of an image block")
    kind = source.get("type")
    if kind == "base64":
        return _from_base64(source.get("data"))
    if kind == "url":
        return _from_url(source.get("url"), allow_local_files)
    if kind == "file" or "file_id" in source:
        raise RemoteImageError("image blocks holding provider file ids cannot be judged locally; pass the bytes")
    raise InvalidImageError(f"image block has a source of unknown type {str(kind)[:40]!r}")


def _from_media(block: Mapping[str, Any]) -> bytes:
    """``{"type": "media", "mime_type": "image/...", "data": base64 str or bytes}`` (older Google blocks)."""
    mime = block.get("mime_type")
    if not isinstance(mime, str) or not mime.startswith("image/"):
        raise InvalidInputError(f"the guard cannot judge media blocks of type {str(mime)[:40]!r}")
    if "file_uri" in block:
        raise RemoteImageError("media blocks naming a file_uri cannot be judged locally; pass the bytes")
    data = block.get("data")
    return bytes(data) if isinstance(data, (bytes, bytearray)) else _from_base64(data)


def _role(message: BaseMessage) -> str:
    for cls, role in _ROLES.items():
        if isinstance(message, cls):
            return role
    return getattr(message, "role", None) or message.type


def _from_base64(data: Any) -> bytes:
    if not isinstance(data, str):
        raise InvalidImageError(f"base64 image data must be a string, got {type(data).__name__}")
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise InvalidImageError(f"image block holds invalid base64 data: {err}") from err


def _from_url(url: Any, allow_local_files: bool) -> bytes | Path:
    if not isinstance(url, str) or not url:
        raise InvalidImageError(f"image URL must be a non-empty string, got {url!r}")
    if url.startswith("data:"):
        return _from_data_url(url)
    parsed = urlparse(url)
    # One-letter schemes are Windows drive letters ("C:\\x.png"), i.e. plain paths.
    if parsed.scheme and len(parsed.scheme) > 1 and parsed.scheme != "file":
        raise RemoteImageError(
            f"image URL {url[:80]!r} is remote; psaguard fetches nothing, so download it and pass the bytes "
            "(base64 data URL) instead"
        )
    if not allow_local_files:
        raise InvalidImageError("local image files are not allowed here (allow_local_files=False)")
    return _local_path(url, parsed)


def _from_data_url(url: str) -> bytes:
    match = _DATA_URL.match(url)
    if match is None:
        raise InvalidImageError("image data URL is not base64-encoded (expected 'data:<mime>;base64,...')")
    return _from_base64(match["data"])


def _local_path(url: str, parsed: ParseResult) -> Path:
    """The local file a ``file://`` URL or a plain path names."""
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise RemoteImageError(f"file URL {url[:80]!r} names a remote host")
        return Path(url2pathname(parsed.path))
    return Path(url)
