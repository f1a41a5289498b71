"""The OpenAI wire format the server speaks: request bodies, content parts and the error JSON.

Request models accept what OpenAI's API accepts for the features psaguard implements. The chat request keeps
unknown fields (``extra="allow"``) because proxy mode forwards them to the upstream model unchanged; the
moderation request forbids them, as OpenAI's API does.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from psaguard.errors import (
    ConfigError,
    GenerationUnavailableError,
    GuardBlocked,
    GuardInternalError,
    InvalidImageError,
    InvalidInputError,
    InvalidPromptError,
    PsaGuardError,
    ResponseBlocked,
    ResponseHeadMissingError,
)
from psaguard.verdict import SafetyVerdict

__all__ = [
    "VERDICT_HEADERS",
    "ApiError",
    "ChatMessage",
    "ChatRequest",
    "ContentPart",
    "ImageUrl",
    "ImageUrlPart",
    "ModerationMessage",
    "ModerationRequest",
    "TextPart",
    "api_error_from",
    "error_body",
    "verdict_headers",
]


class ImageUrl(BaseModel):
    """An image reference: a ``data:image/...;base64,`` URL, or a remote URL (refused unless allow-listed).

    Other fields are refused: an upstream could read a second image from one (``data``, ``base64``, ...)
    while the guard judged ``url``, and proxy mode forwards the part as sent.
    """

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="data: URL or http(s) URL of the image.")
    detail: str | None = Field(None, description="OpenAI's detail hint; accepted and ignored.")


class TextPart(BaseModel):
    """A text part of a multimodal input."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"] = Field(description="Always 'text'.")
    text: str = Field(description="The text.")


class ImageUrlPart(BaseModel):
    """An image part of a multimodal input."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["image_url"] = Field(description="Always 'image_url'.")
    image_url: ImageUrl = Field(description="Where the image is.")


ContentPart = Union[TextPart, ImageUrlPart]
"""One part of a multimodal input or message."""


class ModerationMessage(BaseModel):
    """One turn of a conversation given to ``/v1/moderations`` (psaguard's extension of OpenAI's input)."""

    model_config = ConfigDict(extra="forbid")

    role: str = Field(description="'system', 'user', 'assistant' or 'tool' (others: 400 invalid_prompt).")
    content: Union[str, list[ContentPart]] = Field(description="Text or a list of parts.")


class ModerationRequest(BaseModel):
    """``POST /v1/moderations``: one string, a list of strings (one result each), one multimodal input, or one
    conversation (a list of messages: judged as an answer when its last turn is the assistant's)."""

    model_config = ConfigDict(extra="forbid")

    input: Union[str, list[str], list[ContentPart], list[ModerationMessage]] = Field(description="What to judge.")
    model: str | None = Field(None, description="Model name echoed in the response.")


class ChatMessage(BaseModel):
    """One chat message; only user messages carry images."""

    model_config = ConfigDict(extra="allow")

    role: str = Field(description="'system', 'developer', 'user', 'assistant' or 'tool'.")
    content: Union[str, list[ContentPart], None] = Field(None, description="Text or a list of parts.")


class ChatRequest(BaseModel):
    """``POST /v1/chat/completions``; unknown fields are kept and forwarded upstream in proxy mode."""

    model_config = ConfigDict(extra="allow")

    messages: list[ChatMessage] = Field(min_length=1, description="The conversation.")
    model: str | None = Field(None, description="Model name; forwarded upstream in proxy mode.")
    stream: bool = Field(False, description="Answer with server-sent events.")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate (legacy name).")
    max_completion_tokens: int | None = Field(None, ge=1, description="Most tokens to generate.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 or None decodes greedily.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling mass when sampling.")
    n: int | None = Field(None, ge=1, le=1, description="Only one choice is supported.")


class ApiError(Exception):
    """An HTTP error answered in OpenAI's error JSON shape; ``extra`` adds keys to the error object, ``headers``
    to the response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.extra = extra or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"message", "type", "param", "code", ...extra}}``."""
        return error_body(self.message, type=self.type, code=self.code, param=self.param, **self.extra)


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """OpenAI's error JSON: ``{"error": {"message", "type", "param", "code"}}`` plus ``extra`` keys."""
    return {"error": {"message": message, "type": type, "param": param, "code": code, **extra}}


VERDICT_HEADERS = ("x-psaguard-action", "x-psaguard-rule", "x-psaguard-level", "x-psaguard-type")
"""Response headers carrying the deciding verdict's action, rule, level code and type code."""


def verdict_headers(verdict: SafetyVerdict) -> dict[str, str]:
    """The deciding verdict as response headers (ASCII: codes and rules are ASCII by construction)."""
    values = (verdict.action, verdict.rule, verdict.level.code, verdict.type.code)
    return {name: value.encode("ascii", "replace").decode() for name, value in zip(VERDICT_HEADERS, values)}


# Most specific first: the first class an error is an instance of decides its status and code.
_ERROR_MAP: tuple[tuple[type[PsaGuardError], int, str, str], ...] = (
    (InvalidImageError, 400, "invalid_request_error", "invalid_image"),
    (InvalidPromptError, 400, "invalid_request_error", "invalid_prompt"),
    (InvalidInputError, 400, "invalid_request_error", "invalid_input"),
    (GenerationUnavailableError, 400, "invalid_request_error", "generation_unavailable"),
    (ResponseHeadMissingError, 500, "server_error", "response_head_missing"),  # the server's setup, not the input
    (ConfigError, 400, "invalid_request_error", "unsupported_request"),
    (GuardInternalError, 500, "server_error", "guard_internal_error"),
)


def api_error_from(err: PsaGuardError) -> ApiError:
    """The HTTP error for a psaguard error: 400 for bad input, 400 ``content_policy_violation`` for a block
    (with the verdict), 500 when the guard could not judge (the request is refused: fail closed)."""
    if isinstance(err, GuardBlocked):
        return ApiError(
            400,
            str(err),
            code="content_policy_violation",
            extra={"psaguard": err.verdict.model_dump(mode="json")},
            headers=verdict_headers(err.verdict),
        )
    if isinstance(err, ResponseBlocked):  # the answer was stopped by the response policy: nothing of it is sent
        return ApiError(
            400,
            str(err),
            code="content_policy_violation",
            extra={"psaguard_response": err.verdict.model_dump(mode="json")},
        )
    for kind, status, error_type, code in _ERROR_MAP:
        if isinstance(err, kind):
            return ApiError(status, f"{type(err).__name__}: {err}", type=error_type, code=code)
    return ApiError(500, f"{type(err).__name__}: {err}", type="server_error", code="guard_error")
