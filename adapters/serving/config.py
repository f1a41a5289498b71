"""Settings of ``psaguard serve``: where it listens, what it accepts, how it batches and what it calls upstream."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from psaguard.images.decode import MAX_IMAGE_BYTES, MAX_IMAGES_PER_REQUEST
from psaguard.policy import TextOnlyAction

__all__ = ["BatchingConfig", "LimitsConfig", "ServeConfig", "ServeMode"]

ServeMode = Literal["local", "proxy"]
"""'local': the server holds the VLM and generates; 'proxy': a classifier-only guard in front of an upstream."""


class BatchingConfig(BaseModel):
    """How concurrent classification requests coalesce into one ``classify_requests`` call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch: int = Field(16, ge=1, le=1024, description="Most requests judged in one forward pass (1 = no batching).")
    max_wait_ms: float = Field(
        5.0,
        ge=0.0,
        le=10_000.0,
        description="Longest an idle worker waits for batch-mates that are already in the server decoding their "
        "images, in ms (it never waits for requests nobody has sent).",
    )
    max_queue: int = Field(
        1024, ge=1, description="Requests waiting to be judged beyond which new ones get 503 (back-pressure)."
    )


class LimitsConfig(BaseModel):
    """Request limits; a request over one gets a 4xx in OpenAI's error shape before the guard runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Largest request body, in bytes (413 above).")
    max_images: int = Field(
        MAX_IMAGES_PER_REQUEST, ge=1, description="Most image parts in one moderation input or chat request."
    )
    max_image_bytes: int = Field(
        MAX_IMAGE_BYTES, ge=1, description="Largest encoded image (after base64 decoding), in bytes."
    )
    max_prompt_chars: int = Field(32_000, ge=1, description="Most characters of text in one input or chat request.")
    max_inputs: int = Field(64, ge=1, description="Most inputs in one moderation request.")
    max_new_tokens: int = Field(512, ge=1, description="Cap on max_tokens of a local-mode chat completion.")
    request_timeout_s: float = Field(
        60.0,
        gt=0.0,
        description="Time a request may take to be judged (and, unstreamed, answered); 504 after. The body "
        "must also arrive within this time (408 after), counted separately.",
    )
    max_messages: int = Field(256, ge=1, description="Most messages in one chat request.")
    max_content_parts: int = Field(
        1024, ge=1, description="Most content parts in one chat request (all messages) or moderation input."
    )
    max_json_items: int = Field(
        16_384,
        ge=64,
        description="Most JSON containers and separators ('{', '[', ',') in a body beyond the text allowance "
        "(max_prompt_chars), counted in the raw bytes before parsing (400 above).",
    )
    max_pixels_in_flight: int | None = Field(
        None,
        ge=1,
        description="Image pixels (decoded, queued, being judged or generated from) the server holds at once; "
        "a request that would exceed it gets 503 with Retry-After. None: twice the guard's max_image_pixels. "
        "Never below the guard's max_image_pixels (one image of the largest size is always admitted alone).",
    )
    max_sse_line_bytes: int = Field(
        1024 * 1024, ge=1024, description="Longest line of an upstream event stream in proxy mode (error after)."
    )


class ServeConfig(BaseModel):
    """Everything ``create_app`` needs besides the guard itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: ServeMode = Field("local", description="'local' generates with the guard's model, 'proxy' forwards.")
    model_name: str = Field("psaguard", description="Model name reported in responses when the request names none.")
    upstream: str | None = Field(
        None, description="Base URL of the upstream OpenAI-compatible API in proxy mode, e.g. http://host:8001/v1."
    )
    upstream_api_key: str | None = Field(
        None, repr=False, description="Bearer key sent upstream (never the client's key); None sends none."
    )
    upstream_timeout_s: float = Field(120.0, gt=0.0, description="Timeout of one upstream call, in seconds.")
    on_text_only: TextOnlyAction = Field(
        "allow", description="Action for requests without an image, which the image-based guard cannot judge."
    )
    check_answers: bool = Field(
        True,
        description="Judge answers with the guard's response head: chat completions (local: the streaming "
        "monitor; proxy: the upstream's answer) and moderated conversations ending with the assistant's turn. "
        "True on a guard without a response head fails those requests closed (500 response_head_missing); False "
        "is the explicit opt-out that serves answers unjudged (docs/serving.md).",
    )
    image_url_allowlist: tuple[str, ...] = Field(
        (),
        description="URL prefixes (e.g. 'https://images.example.com/') of remote images the server may fetch; "
        "empty refuses every remote URL (only data: URLs are read).",
    )
    cors_origins: tuple[str, ...] = Field((), description="Origins allowed by CORS; empty turns CORS off.")
    batching: BatchingConfig = Field(default_factory=BatchingConfig, description="Dynamic batching.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Request limits.")
    max_concurrent_generations: int = Field(
        1, ge=1, description="Local-mode generations run at once (the model is shared; more only helps on GPU)."
    )

    @field_validator("image_url_allowlist")
    @classmethod
    def _prefixes_have_hosts(cls, prefixes: tuple[str, ...]) -> tuple[str, ...]:
        for prefix in prefixes:
            scheme, sep, rest = prefix.partition("://")
            # A bare 'https://' or 'https://host' (no slash) would also match 'https://host.evil.com'.
            if scheme not in ("http", "https") or not sep or "/" not in rest or rest.startswith("/"):
                raise ValueError(f"allow-list prefix {prefix!r} must be http(s)://host/ with a path ending the host")
        return prefixes
