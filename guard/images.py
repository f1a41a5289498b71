"""Loading request images safely: many input kinds, typed errors, a pixel limit, no global state."""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from psaguard.errors import InvalidImageError

__all__ = ["ImageInput", "load_image"]

ImageInput = Union[Image.Image, str, os.PathLike, bytes, bytearray, memoryview, np.ndarray]
"""What the guard accepts as an image: a PIL image, a file path, encoded bytes, or an HxW[xC] array."""

_MAX_FILE_BYTES = 64 * 1024 * 1024  # encoded size limit; a decoded size limit is max_pixels


def load_image(source: ImageInput, max_pixels: int = 40_000_000) -> Image.Image:
    """Return ``source`` as an RGB PIL image, or raise :class:`InvalidImageError` saying why.

    The pixel count is checked from the header before any pixel is decoded (decompression bombs), animated
    images give their first frame, EXIF orientation is applied, and transparency is flattened onto white.
    PIL's global ``MAX_IMAGE_PIXELS`` is left untouched.
    """
    image = _open(source)
    try:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise InvalidImageError(f"image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise InvalidImageError(f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if getattr(image, "is_animated", False):
                image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return _to_rgb(image)
    except InvalidImageError:
        raise
    except (
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        MemoryError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
        struct.error,
    ) as err:
        raise InvalidImageError(f"cannot decode image: {type(err).__name__}: {err}") from err


def _open(source: Any) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise InvalidImageError("image bytes are empty")
        if len(data) > _MAX_FILE_BYTES:
            raise InvalidImageError(f"encoded image of {len(data)} bytes exceeds {_MAX_FILE_BYTES} bytes")
        return _open_stream(io.BytesIO(data), "bytes")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError as err:
            raise InvalidImageError(f"cannot read image file {path}: {err}") from err
        if not path.is_file():
            raise InvalidImageError(f"{path} is not a file")
        if size == 0:
            raise InvalidImageError(f"image file {path} is empty")
        if size > _MAX_FILE_BYTES:
            raise InvalidImageError(f"image file {path} of {size} bytes exceeds {_MAX_FILE_BYTES} bytes")
        return _open_stream(io.BytesIO(path.read_bytes()), str(path))
    raise InvalidImageError(
        f"unsupported image input of type {type(source).__name__}; pass a PIL image, path, bytes or array"
    )


def _open_stream(stream: io.BytesIO, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(stream)
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as err:
        raise InvalidImageError(f"{name} is not a readable image: {err}") from err


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise InvalidImageError(f"array image must be HxW, HxWx1, HxWx3 or HxWx4; got shape {array.shape}")
    if array.size == 0:
        raise InvalidImageError(f"array image is empty (shape {array.shape})")
    if array.dtype == np.uint8:
        data = array
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InvalidImageError("float array image holds NaN or infinite values")
        data = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        top = 1.0 if array.dtype == np.bool_ else float(np.iinfo(array.dtype).max)
        data = _scale_to_uint8(array.astype(np.float64), top)
    else:
        raise InvalidImageError(f"unsupported array dtype {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(data))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        return Image.fromarray(_scale_to_uint8(array, top)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _scale_to_uint8(array: np.ndarray, top: float) -> np.ndarray:
    return (np.clip(array, 0.0, top) / top * 255.0).round().astype(np.uint8)
