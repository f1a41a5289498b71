"""Request bodies: read within a size and time bound, counted before parsing, parsed and validated off the loop.

A hostile body must not hold the event loop (health probes and every other request wait on it while it
runs): 806,000 empty text parts in 20 MiB took 8-16 s of JSON parsing and pydantic validation there. So a
body is (1) read up to ``max_body_bytes`` within ``request_timeout_s`` (a client sending one byte a second
gets a 408), (2) refused when its raw bytes hold more JSON containers and separators than any admissible
request can (a C-speed count, no parsing), and (3) decoded, parsed, checked for lone surrogates, counted
(messages, content parts) and validated by pydantic in a worker thread, so only bounded work is left.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import ClientDisconnect, Request

from psaguard.serving.config import LimitsConfig
from psaguard.serving.protocol import ApiError

__all__ = ["count_chat", "count_moderation", "json_items", "parse_body", "read_body", "read_request"]

Model = TypeVar("Model", bound=BaseModel)

_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # a UTF-16 surrogate written as an escape


async def read_body(request: Request, limits: LimitsConfig) -> bytes:
    """The raw body: 413 above ``max_body_bytes`` (whatever Content-Length says), 408 when it has not arrived
    within ``request_timeout_s``, 400 when the client left before sending it all."""
    limit = limits.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit}", code="body_too_large")
    chunks: list[bytes] = []
    size = 0

    async def receive() -> None:
        nonlocal size
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise ApiError(413, f"request body exceeds the limit of {limit} bytes", code="body_too_large")
            chunks.append(part)

    try:
        await asyncio.wait_for(receive(), limits.request_timeout_s)
    except asyncio.TimeoutError as err:
        raise ApiError(
            408, f"the body did not arrive within {limits.request_timeout_s:g} s", code="body_timeout"
        ) from err
    except ClientDisconnect as err:  # nobody is left to answer; end the request without judging it
        raise ApiError(
            400, "the client disconnected before sending the whole body", code="client_disconnected"
        ) from err
    return b"".join(chunks)


def json_items(data: bytes) -> int:
    """Containers and separators in raw JSON: an upper bound on its values, counted at C speed."""
    return data.count(b"{") + data.count(b"[") + data.count(b",")


def parse_body(
    data: bytes, limits: LimitsConfig, model: type[Model], count: Callable[[dict[str, Any], LimitsConfig], None]
) -> tuple[Model, dict[str, Any]]:
    """``data`` validated as ``model`` and the parsed JSON object, or a 400 saying why not.

    ``count`` checks the parsed object's messages and parts against the limits before pydantic runs.
    Blocking (bounded by the pre-count); call it in a worker thread.
    """
    # Text may hold any number of these characters, up to max_prompt_chars in all; beyond that allowance and
    # the structure of max_json_items, no body can be admissible, so none is parsed.
    allowed = limits.max_json_items + limits.max_prompt_chars
    if (items := json_items(data)) > allowed:
        raise ApiError(
            400,
            f"the body holds {items} JSON containers and separators, more than the {allowed} any admissible "
            "request needs (too many messages, parts or values)",
            code="too_many_items",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(400, f"the body is not valid UTF-8: {err}", code="invalid_json") from err
    try:
        body = json.loads(text)
    except RecursionError as err:
        raise ApiError(400, "the body's JSON is nested too deeply", code="invalid_json") from err
    except ValueError as err:
        raise ApiError(400, f"the body is not valid JSON: {err}", code="invalid_json") from err
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    if _ESCAPED_SURROGATE.search(text):
        _check_no_lone_surrogate(body)
    count(body, limits)
    return model.model_validate(body), body


async def read_request(
    request: Request,
    limits: LimitsConfig,
    model: type[Model],
    count: Callable[[dict[str, Any], LimitsConfig], None],
) -> tuple[Model, dict[str, Any]]:
    """:func:`read_body` then :func:`parse_body` in a worker thread (the event loop stays free)."""
    data = await read_body(request, limits)
    return await asyncio.to_thread(parse_body, data, limits, model, count)


def count_chat(body: dict[str, Any], limits: LimitsConfig) -> None:
    """400 when a chat body has more messages or content parts than the limits (before pydantic reads them)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return  # pydantic says what is wrong
    if len(messages) > limits.max_messages:
        raise ApiError(
            400,
            f"{len(messages)} messages exceed the limit of {limits.max_messages}",
            code="too_many_messages",
            param="messages",
        )
    parts = sum(
        len(message["content"])
        for message in messages
        if isinstance(message, dict) and isinstance(message.get("content"), list)
    )
    _check_parts(parts, limits, "messages")


def count_moderation(body: dict[str, Any], limits: LimitsConfig) -> None:
    """400 when a moderation body's input list is longer than the part limit, or a conversation has more
    messages or parts than the chat limits (before pydantic reads it)."""
    items = body.get("input")
    if isinstance(items, list):
        _check_parts(len(items), limits, "input")
        if any(isinstance(item, dict) and "role" in item for item in items):
            count_chat({"messages": items}, limits)


def _check_parts(parts: int, limits: LimitsConfig, param: str) -> None:
    if parts > limits.max_content_parts:
        raise ApiError(
            400,
            f"{parts} content parts exceed the limit of {limits.max_content_parts}",
            code="too_many_parts",
            param=param,
        )


def _check_no_lone_surrogate(body: dict[str, Any]) -> None:
    # json joins escaped surrogate pairs into one code point, so any surrogate left is a lone one, which no
    # tokenizer or JSON encoder of a response can handle.
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:
        raise ApiError(
            400,
            "the body holds a lone UTF-16 surrogate (\\ud800-\\udfff); it is not valid Unicode",
            code="invalid_json",
        ) from err
