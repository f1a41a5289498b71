"""Request images and text: data URLs decoded, remote URLs fetched only from an allow-list, limits checked.

Every image ends as a decoded RGB PIL image (through :func:`psaguard.images.load_image`, with the guard's
pixel limit and the server's byte limit) before it is queued for the guard, so a bad image fails its own
request with a 400 and never reaches a batch.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from PIL import Image

from psaguard.errors import InvalidImageError
from psaguard.images.checks import check_structure, sniff_format
from psaguard.images.decode import ALLOWED_FORMATS, ImageFormat, load_image
from psaguard.serving.admission import Ticket
from psaguard.serving.config import LimitsConfig
from psaguard.serving.protocol import ApiError, ContentPart, ImageUrl, ImageUrlPart, TextPart

__all__ = ["ImageLoader", "ParsedInput", "check_text", "header_pixels", "split_parts", "url_under"]

logger = logging.getLogger(__name__)

_DATA_PREFIX = "data:"


@dataclass(frozen=True)
class ParsedInput:
    """The text and image references of one multimodal input, in order."""

    text: str
    images: list[ImageUrl]


def split_parts(parts: Sequence[ContentPart] | str | None, limits: LimitsConfig, param: str) -> ParsedInput:
    """Text (parts joined by a space) and image references of one input, or a 400 over a limit."""
    if parts is None:
        return ParsedInput("", [])
    if isinstance(parts, str):
        parsed = ParsedInput(parts, [])
    else:
        texts = [part.text for part in parts if isinstance(part, TextPart)]
        parsed = ParsedInput(" ".join(texts), [part.image_url for part in parts if isinstance(part, ImageUrlPart)])
    check_text(parsed.text, limits, param)
    if len(parsed.images) > limits.max_images:
        raise ApiError(
            400,
            f"{len(parsed.images)} images exceed the limit of {limits.max_images} per request",
            code="too_many_images",
            param=param,
        )
    return parsed


def check_text(text: str, limits: LimitsConfig, param: str) -> None:
    """400 when ``text`` is longer than the prompt limit."""
    if len(text) > limits.max_prompt_chars:
        raise ApiError(
            400,
            f"text of {len(text)} characters exceeds the limit of {limits.max_prompt_chars}",
            code="prompt_too_long",
            param=param,
        )


def header_pixels(data: bytes, formats: Sequence[ImageFormat]) -> int:
    """``width * height`` from an encoded image's header, after the same structural pre-check as
    :func:`psaguard.images.load_image`; 0 when it has none readable (``load_image`` then says why)."""
    fmt = sniff_format(data)
    if fmt is None or fmt not in formats:
        return 0
    try:
        check_structure(data, fmt)
        with Image.open(io.BytesIO(data), formats=(fmt,)) as image:
            width, height = image.size
    except Exception:  # any failure to read the header: load_image raises the typed error
        return 0
    return max(width, 0) * max(height, 0)


_DOT_SEGMENTS = frozenset({".", ".."})
_ENCODED_SEPARATORS = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)  # encoded '.', '/' and '\\'


def url_under(url: str, prefix: str) -> bool:
    """Whether ``url`` lies under the allow-listed ``prefix``: same scheme and host (no user info, same port),
    the prefix's whole path segments begin the URL's, and its last (partial) segment begins the next one.
    Paths with '.' or '..' segments, backslashes or encoded dots and slashes are never under a prefix (a client
    or server may resolve them out of it)."""
    try:
        parts, allowed = urlsplit(url), urlsplit(prefix)
    except ValueError:
        return False
    if (parts.scheme.lower(), parts.netloc.lower()) != (allowed.scheme.lower(), allowed.netloc.lower()):
        return False
    if "\\" in parts.path or _ENCODED_SEPARATORS.search(parts.path):
        return False
    segments = parts.path.split("/")
    if _DOT_SEGMENTS & set(segments):
        return False
    *whole, partial = allowed.path.split("/")  # 'https://h/public/' ends in '' (any name under /public/)
    return len(segments) > len(whole) and segments[: len(whole)] == whole and segments[len(whole)].startswith(partial)


class ImageLoader:
    """Turns image references into decoded images (with the guard's pixel limit and formats); remote ones only
    under an allow-listed prefix."""

    def __init__(
        self,
        limits: LimitsConfig,
        max_pixels: int,
        allowlist: Sequence[str] = (),
        client: httpx.AsyncClient | None = None,
        formats: Sequence[ImageFormat] = ALLOWED_FORMATS,
    ) -> None:
        self.limits = limits
        self.max_pixels = max_pixels
        self.formats = tuple(formats)
        self.allowlist = tuple(allowlist)
        self.client = client

    async def load(self, ref: ImageUrl, param: str, ticket: Ticket | None = None) -> Image.Image:
        """The decoded image, or a 400 saying why not; charged to ``ticket`` by its header size before it is
        decoded (a 503 when the in-flight budget has no room)."""
        data = await self._bytes(ref.url, param)
        if ticket is not None:
            pixels = await asyncio.to_thread(header_pixels, data, self.formats)
            if pixels <= self.max_pixels:  # a larger image is refused by load_image (400), not kept waiting (503)
                ticket.charge(pixels, param)
        try:
            return await asyncio.to_thread(
                load_image, data, self.max_pixels, max_bytes=self.limits.max_image_bytes, formats=self.formats
            )
        except InvalidImageError as err:
            raise ApiError(400, f"{param}: {err}", code="invalid_image", param=param) from err

    async def load_all(self, refs: Sequence[ImageUrl], param: str, ticket: Ticket | None = None) -> list[Image.Image]:
        return [await self.load(ref, f"{param}[{index}]", ticket) for index, ref in enumerate(refs)]

    async def _bytes(self, url: str, param: str) -> bytes:
        if url.startswith(_DATA_PREFIX):
            return self._decode_data_url(url, param)
        if not any(url_under(url, prefix) for prefix in self.allowlist):
            raise ApiError(
                400,
                "remote image URLs are refused: send the image as a data:image/...;base64 URL "
                "(or start the server with an allow-list of image URL prefixes)",
                code="remote_image_refused",
                param=param,
            )
        return await self._fetch(url, param)

    def _decode_data_url(self, url: str, param: str) -> bytes:
        header, sep, payload = url.partition(",")
        if not sep or not header.endswith(";base64") or not header[len(_DATA_PREFIX) :].startswith("image/"):
            raise ApiError(400, f"{param}: expected a data:image/...;base64,... URL", code="invalid_image", param=param)
        # base64 grows data by 4/3, so the encoded length bounds the decoded size before decoding.
        if len(payload) * 3 // 4 > self.limits.max_image_bytes + 3:
            raise self._too_large(len(payload) * 3 // 4, param)
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as err:
            raise ApiError(
                400, f"{param}: invalid base64 image data: {err}", code="invalid_image", param=param
            ) from err

    async def _fetch(self, url: str, param: str) -> bytes:
        if self.client is None:
            raise ApiError(400, "remote image fetching is not configured", code="remote_image_refused", param=param)
        chunks, size = [], 0
        try:
            # No redirects: a redirect could leave the allow-listed prefix.
            async with self.client.stream("GET", url, follow_redirects=False) as response:
                if response.status_code != 200:
                    raise ApiError(
                        400, f"{param}: fetching the image gave HTTP {response.status_code}", code="invalid_image"
                    )
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self.limits.max_image_bytes:
                        raise self._too_large(size, param)
                    chunks.append(chunk)
        except httpx.HTTPError as err:
            logger.info("fetching %s failed: %s", url, err)
            raise ApiError(400, f"{param}: cannot fetch the image: {type(err).__name__}", code="invalid_image") from err
        return b"".join(chunks)

    def _too_large(self, size: int, param: str) -> ApiError:
        return ApiError(
            400,
            f"{param}: image of {size} bytes exceeds the limit of {self.limits.max_image_bytes} bytes",
            code="image_too_large",
            param=param,
        )
