"""Loading request images safely: many input kinds, one typed error, size limits checked before decoding.

Every input ends as an RGB PIL image or an :class:`~psaguard.errors.InvalidImageError` saying why; see
docs/security.md for the outcome of each kind of hostile input. Nothing global is changed: PIL's
``MAX_IMAGE_PIXELS`` and the process-wide warnings filters are left alone (``warnings.catch_warnings`` is not
thread-safe), because the limits are checked here, from the header, before any pixel is decoded.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from psaguard.checkpoints.files import read_regular_file
from psaguard.errors import InvalidImageError, InvalidInputError
from psaguard.images.checks import check_structure, refusal_reason, sniff_format

__all__ = [
    "ALLOWED_FORMATS",
    "MAX_ASPECT_RATIO",
    "MAX_IMAGES_PER_REQUEST",
    "MAX_IMAGE_BYTES",
    "OPT_IN_FORMATS",
    "ImageFormat",
    "ImageInput",
    "check_image_count",
    "image_size",
    "load_image",
]

ImageInput = Union[Image.Image, str, os.PathLike, bytes, bytearray, memoryview, np.ndarray]
"""What the guard accepts as an image: a PIL image, a file path, encoded bytes, or an HxW[xC] array."""

MAX_IMAGE_BYTES = 64 * 1024 * 1024
"""Largest encoded file read; the decoded size is bounded separately by ``max_pixels``."""

MAX_IMAGES_PER_REQUEST = 4
"""Most images in one request: the default of ``SafetyGuardConfig.max_images_per_request`` (guarded
generation, the LangChain adapters) and of the server's ``LimitsConfig.max_images``. Each image costs a vision
pass and its tokens in the language model (100 images took seconds and gigabytes on small models)."""

MAX_ASPECT_RATIO = 100.0
"""Longest side over shortest side. Processors resize the short side up to their input size, so a 1xN strip
of few pixels would become a huge array there (a 400000x1 image took 4 GB and 29 s in the tiny model)."""

ImageFormat = Literal["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "PPM"]
"""A format :func:`load_image` can decode from bytes and paths."""

ALLOWED_FORMATS: tuple[ImageFormat, ...] = ("PNG", "JPEG", "GIF", "WEBP")
"""Formats decoded from bytes and paths by default. Others are refused: EPS would run Ghostscript, and rarer
parsers are attack surface a guard does not need. MPO (multi-picture JPEG from phones) opens through the
JPEG plugin. Every file is walked by :mod:`psaguard.images.checks` before Pillow parses it."""

OPT_IN_FORMATS: tuple[ImageFormat, ...] = ("BMP", "TIFF", "PPM")
"""Formats decoded only when the caller lists them (``formats=`` / ``SafetyGuardConfig.image_formats``):
rarely sent by chat clients, and parsed partly in Python by Pillow (BMP RLE, plain PPM) or through libtiff's
large surface. Their hostile variants are refused by the pre-checks (RLE BMP, plain PPM, TIFFs over the
strip and tag caps, BigTIFF) when they are enabled."""

# What Pillow and numpy raise on hostile data: Pillow documents OSError/SyntaxError/ValueError for bad files,
# its parsers also leak struct.error, EOFError, IndexError and KeyError on truncated tables; MemoryError
# covers an allocation the limits did not foresee. Anything else is a bug and propagates.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    MemoryError,
    struct.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,  # only raised when the application turned this warning into an error
)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height (as exif_transpose does)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def load_image(
    source: ImageInput,
    max_pixels: int = 40_000_000,
    *,
    max_bytes: int = MAX_IMAGE_BYTES,
    max_aspect_ratio: float = MAX_ASPECT_RATIO,
    formats: Sequence[ImageFormat] = ALLOWED_FORMATS,
) -> Image.Image:
    """Return ``source`` as an RGB PIL image, or raise :class:`InvalidImageError` saying why.

    Size limits (pixels, aspect ratio, encoded bytes) are checked from the header before any pixel is
    decoded, after a structural pre-check bounded in time (:mod:`psaguard.images.checks`). Only ``formats``
    are decoded from bytes and paths. Animated and multi-page files
    give their first frame (a PIL image the caller passes gives the frame it is on, as a processor would
    read it), EXIF orientation is applied, and transparency is composited onto white as Hugging Face
    processors do. A PIL image the caller passes is never modified.

    Args:
        source: A PIL image, a path to a file, the encoded bytes of a file, or an HxW, HxWx1, HxWx3 or
            HxWx4 array (uint8; uint16 clipped at 255 as Pillow does; other integers within 0..255; bool;
            floats within 0..1).
        max_pixels: Largest ``width * height`` accepted.
        max_bytes: Largest encoded file accepted.
        max_aspect_ratio: Largest ratio of the long side to the short side accepted.
        formats: Formats decoded from bytes and paths (default :data:`ALLOWED_FORMATS`; the others of
            :data:`OPT_IN_FORMATS` may be added).
    """
    limits = _Limits(max_pixels, max_bytes, max_aspect_ratio, tuple(formats))
    if isinstance(source, Image.Image):
        limits.check_size(source.size)
        return _decode(source, limits)
    if isinstance(source, np.ndarray):
        return _to_rgb(_from_array(source, limits))
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = _bytes_of(source, limits)
        return _decode(_open_bytes(data, "image bytes", limits), limits)
    if isinstance(source, (str, os.PathLike)):
        path = _path_of(source)
        data = read_regular_file(path, limits.max_bytes, InvalidImageError, "image file")
        limits.check_bytes(len(data), f"image file {path}")
        return _decode(_open_bytes(data, str(path), limits), limits)
    raise InvalidImageError(
        f"unsupported image input of type {type(source).__name__}; pass a PIL image, path, bytes or array"
    )


def image_size(
    source: str | os.PathLike,
    max_pixels: int = 40_000_000,
    *,
    max_bytes: int = MAX_IMAGE_BYTES,
    max_aspect_ratio: float = MAX_ASPECT_RATIO,
    formats: Sequence[ImageFormat] = ALLOWED_FORMATS,
) -> tuple[int, int]:
    """(width, height) of the image file at ``source`` as :func:`load_image` would return it, without decoding.

    The same pre-checks and header limits as :func:`load_image` apply (:class:`InvalidImageError` otherwise),
    and the EXIF orientation is taken into account, so callers can bound what several images add up to (a
    canvas they are pasted on) before decoding any of them.
    """
    limits = _Limits(max_pixels, max_bytes, max_aspect_ratio, tuple(formats))
    path = _path_of(source)
    data = read_regular_file(path, limits.max_bytes, InvalidImageError, "image file")
    limits.check_bytes(len(data), f"image file {path}")
    image = _open_bytes(data, str(path), limits)
    width, height = image.size
    return (height, width) if _header_orientation(image) in _TRANSPOSING_ORIENTATIONS else (width, height)


def _header_orientation(image: Image.Image) -> int | None:
    """The EXIF orientation found while parsing the header, or None.

    Read from the EXIF block the header parse kept (JPEG APP1, WebP and PNG chunks before the pixels):
    ``Image.getexif()`` would decode a PNG's pixels to look for an EXIF chunk after them. Such a late chunk
    is therefore not seen here; :func:`load_image` still applies it.
    """
    data = image.info.get("exif")
    if not isinstance(data, bytes) or not data:
        return None
    exif = Image.Exif()
    try:
        exif.load(data)
        orientation = exif.get(_EXIF_ORIENTATION)
    except _DECODE_ERRORS as err:
        raise InvalidImageError(f"image has an unreadable EXIF block: {type(err).__name__}: {err}") from err
    return orientation if isinstance(orientation, int) else None


class _Limits:
    def __init__(
        self, max_pixels: int, max_bytes: int, max_aspect_ratio: float, formats: tuple[ImageFormat, ...]
    ) -> None:
        self.max_pixels, self.max_bytes, self.max_aspect_ratio = max_pixels, max_bytes, max_aspect_ratio
        self.formats = formats

    def check_size(self, size: tuple[int, int]) -> None:
        width, height = size
        if width <= 0 or height <= 0:
            raise InvalidImageError(f"image has no pixels ({width}x{height})")
        if width * height > self.max_pixels:
            raise InvalidImageError(f"image of {width}x{height} pixels exceeds the limit of {self.max_pixels} pixels")
        if max(width, height) > self.max_aspect_ratio * min(width, height):
            raise InvalidImageError(
                f"image of {width}x{height} pixels exceeds the aspect-ratio limit of {self.max_aspect_ratio:g}:1"
            )

    def check_bytes(self, size: int, name: str) -> None:
        if size == 0:
            raise InvalidImageError(f"{name} is empty")
        if size > self.max_bytes:
            raise InvalidImageError(f"{name} of {size} bytes exceeds the limit of {self.max_bytes} bytes")


def _bytes_of(source: bytes | bytearray | memoryview, limits: _Limits) -> bytes:
    try:
        size = source.nbytes if isinstance(source, memoryview) else len(source)
        limits.check_bytes(size, "image bytes")
        return source.tobytes() if isinstance(source, memoryview) else bytes(source)
    except (TypeError, ValueError) as err:  # e.g. a released memoryview
        raise InvalidImageError(f"cannot read image bytes: {err}") from err


def _path_of(source: str | os.PathLike) -> Path:
    try:
        return Path(source)
    # The caller's __fspath__ may raise anything; whatever it is, the image cannot be read (fail closed).
    except Exception as err:
        raise InvalidImageError(f"cannot use {type(source).__name__} as an image path: {err}") from err


def _open_bytes(data: bytes, name: str, limits: _Limits) -> Image.Image:
    """Pre-check the structure and parse the header only; :func:`_decode` checks the pixel limits first."""
    fmt = sniff_format(data)
    if fmt is None and (reason := refusal_reason(data)) is not None:
        raise InvalidImageError(f"{name}: {reason}")
    if fmt is None or fmt not in limits.formats:
        accepted = ", ".join(limits.formats)
        found = f" ({fmt}: not enabled)" if fmt is not None else ""
        raise InvalidImageError(f"{name} is not an image in an accepted format ({accepted}){found}")
    check_structure(data, fmt)
    try:
        image = Image.open(io.BytesIO(data), formats=(fmt,))
    except UnidentifiedImageError as err:
        raise InvalidImageError(f"{name} is not a readable {fmt} image") from err
    except _DECODE_ERRORS as err:
        raise InvalidImageError(f"{name} is not a readable image: {type(err).__name__}: {err}") from err
    limits.check_size(image.size)
    return image


def _decode(image: Image.Image, limits: _Limits) -> Image.Image:
    try:
        image.load()
        # The decoded size can differ from the header's (GIF frames larger than the screen).
        limits.check_size(image.size)
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except InvalidImageError:
        raise
    except _DECODE_ERRORS as err:
        raise InvalidImageError(f"cannot decode image: {type(err).__name__}: {err}") from err


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB without modifying ``image``: high-bit-depth samples clipped, transparency composited onto white."""
    mode = image.mode
    if mode == "La":  # premultiplied LA: Pillow converts it to LA only
        image, mode = image.convert("LA"), "LA"
    if mode in _ALPHA_MODES or image.info.get("transparency") is not None:
        # Also colour-keyed RGB/L/P images (PNG tRNS), as Hugging Face's convert_to_rgb does.
        try:
            rgba = image.convert("RGBA")
        except (TypeError, ValueError) as err:  # a caller's image with a bogus info["transparency"]
            raise InvalidImageError(f"image has an unusable transparency value: {err}") from err
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return image.copy()
    if mode in _SIXTEEN_BIT or mode == "I":
        # Clipped at 255, not scaled: Pillow's convert("RGB") and Hugging Face's convert_to_rgb clip, so
        # that is what the model behind the guard sees (a 16-bit PNG holding 0..255 is not black to it).
        samples = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
        return Image.fromarray(samples).convert("RGB")
    if mode == "F":
        samples = np.asarray(image)
        if not np.isfinite(samples).all():
            raise InvalidImageError("float image holds NaN or infinite values")
        # Pillow's own F -> L convention: samples are 0..255, clipped.
        return Image.fromarray(np.clip(samples, 0.0, 255.0).round().astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def _from_array(array: np.ndarray, limits: _Limits) -> Image.Image:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise InvalidImageError(f"array image must be HxW, HxWx1, HxWx3 or HxWx4; got shape {array.shape}")
    limits.check_size((array.shape[1], array.shape[0]))
    return Image.fromarray(np.ascontiguousarray(_uint8_samples(array)))


def _uint8_samples(array: np.ndarray) -> np.ndarray:
    """An array image's samples as uint8: bools to 0/255, uint16 clipped, other ints and floats in 0..1 checked."""
    kind = array.dtype.kind
    if kind == "b":
        return array.astype(np.uint8) * np.uint8(255)
    if array.dtype == np.uint8:
        return array
    if kind == "u" and array.dtype.itemsize == 2:
        return np.clip(array, 0, 255).astype(np.uint8)  # as Pillow reads a uint16 array (I;16): clipped
    if kind in "iu":
        return _int_samples(array)
    if kind == "f":
        return _float_samples(array)
    raise InvalidImageError(f"unsupported array dtype {array.dtype}; pass uint8, uint16, bool or floats in 0..1")


def _int_samples(array: np.ndarray) -> np.ndarray:
    if array.min() < 0 or array.max() > 255:
        raise InvalidImageError(
            f"{array.dtype} array image must hold values in 0..255 (got {array.min()}..{array.max()}); "
            "pass uint8, uint16, or floats in 0..1"
        )
    return array.astype(np.uint8)


def _float_samples(array: np.ndarray) -> np.ndarray:
    if not np.isfinite(array).all():
        raise InvalidImageError("float array image holds NaN or infinite values")
    if array.min() < 0.0 or array.max() > 1.0:
        raise InvalidImageError(f"float array image must hold values in 0..1 (got {array.min()}..{array.max()})")
    return (array.astype(np.float32) * 255.0).round().astype(np.uint8)


def check_image_count(count: int, limit: int, where: str = "the request") -> None:
    """Raise :class:`InvalidInputError` when a request holds more than ``limit`` images."""
    if count > limit:
        raise InvalidInputError(
            f"{where} has {count} images; the limit is {limit} per request (max_images_per_request)"
        )
