"""Property-based fuzzing of image loading: every input is an RGB image within the limits or a typed error."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as npst
from PIL import Image

from psaguard.errors import InvalidImageError
from psaguard.images.decode import load_image

FUZZ = settings.get_profile(f"psaguard-{os.environ.get('PSAGUARD_FUZZ', 'ci')}")

# Which formats Pillow can write for each mode: the seeds the mutations start from.
SEEDS: dict[str, tuple[str, ...]] = {
    "1": ("PNG", "BMP", "TIFF", "PPM", "GIF"),
    "L": ("PNG", "JPEG", "WEBP", "TIFF", "PPM", "GIF", "BMP"),
    "LA": ("PNG", "TIFF", "WEBP"),
    "P": ("PNG", "GIF", "BMP", "TIFF"),
    "PA": ("TIFF", "WEBP"),
    "RGB": ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF", "PPM", "ICO", "EPS", "TGA", "PCX", "SGI", "QOI"),
    "RGBA": ("PNG", "WEBP", "TIFF", "BMP"),
    "CMYK": ("JPEG", "TIFF"),
    "YCbCr": ("JPEG", "TIFF"),
    "LAB": ("TIFF",),
    "I": ("TIFF", "PPM"),
    "I;16": ("PNG", "TIFF", "PPM"),
    "I;16B": ("PNG", "TIFF"),
    "F": ("TIFF", "PPM"),
}
LIMIT = 4096  # max_pixels in the fuzz: small, so that bombs are cheap to build


def _image(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    blank = Image.new(mode, size)
    image = Image.frombytes(mode, size, rng.bytes(len(blank.tobytes())))
    if mode == "F":  # random bytes are mostly NaN/huge floats; keep some finite pictures too
        image = Image.fromarray(rng.random(size[::-1], dtype=np.float32) * 255.0)
    return image


@st.composite
def encoded_images(draw: st.DrawFn) -> bytes:
    """Valid files of many formats and modes, optionally animated or EXIF-rotated, then maybe damaged."""
    mode = draw(st.sampled_from(sorted(SEEDS)))
    fmt = draw(st.sampled_from(SEEDS[mode]))
    size = (draw(st.integers(1, 48)), draw(st.integers(1, 48)))
    image = _image(mode, size, draw(st.integers(0, 2**16)))
    kwargs: dict = {}
    if fmt in ("JPEG", "PNG", "WEBP", "TIFF") and draw(st.booleans()):
        exif = Image.Exif()
        exif[0x0112] = draw(st.integers(0, 12))  # orientation; 1..8 valid, the rest garbage
        kwargs["exif"] = exif
    if fmt in ("GIF", "PNG", "WEBP") and draw(st.booleans()):
        kwargs.update(save_all=True, append_images=[_image(mode, size, 1), _image(mode, size, 2)], duration=10)
    buffer = io.BytesIO()
    try:
        image.save(buffer, fmt, **kwargs)
    except (OSError, ValueError, KeyError, TypeError):
        image.convert("RGB").save(buffer, "PNG")
    data = buffer.getvalue()
    damage = draw(st.sampled_from(["none", "truncate", "flip", "splice", "zero_tail"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif damage == "flip":
        mutable = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            mutable[draw(st.integers(0, len(mutable) - 1))] ^= 1 << draw(st.integers(0, 7))
        data = bytes(mutable)
    elif damage == "splice":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=64)) + data[at:]
    elif damage == "zero_tail":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + bytes(len(data) - at)
    return data


@st.composite
def pil_images(draw: st.DrawFn) -> Image.Image:
    """In-memory PIL images of any mode (including ones no file format writes), some empty or oversized."""
    mode = draw(st.sampled_from([*SEEDS, "La", "RGBa", "RGBX", "HSV", "I;16L", "I;16N"]))
    size = (draw(st.integers(0, 80)), draw(st.integers(0, 80)))
    return _image(mode, size, draw(st.integers(0, 2**16)))


arrays = npst.arrays(
    dtype=st.one_of(npst.scalar_dtypes(), npst.byte_string_dtypes(), npst.unicode_string_dtypes()),
    shape=npst.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=70),
)
non_images = st.one_of(
    st.none(),
    st.integers(),
    st.floats(),
    st.text(max_size=300),
    st.binary(max_size=300),
    st.lists(st.integers(0, 255), max_size=20),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.builds(object),
    st.builds(bytearray, st.binary(max_size=64)),
    st.builds(memoryview, st.binary(max_size=64)),
)


def assert_defined_outcome(source: object, max_pixels: int = LIMIT) -> Image.Image | None:
    """``load_image`` gives an RGB image within the limit or raises InvalidImageError; nothing global changes."""
    limit_before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:  # this test's thread only
        warnings.simplefilter("always")
        filters_before = list(warnings.filters)
        try:
            image = load_image(source, max_pixels=max_pixels)  # type: ignore[arg-type]
        except InvalidImageError as err:
            assert str(err)  # a typed error that says why
            image = None
        else:
            assert image.mode == "RGB"
            assert 0 < image.width * image.height <= max_pixels
            assert np.asarray(image).shape == (image.height, image.width, 3)
        assert list(warnings.filters) == filters_before
    # numpy warns on NaN/overflow casts: pixels that silently became garbage. Pillow's own bomb warning
    # (a header claiming > Image.MAX_IMAGE_PIXELS, emitted while parsing it) is expected: we refuse next.
    garbage = [w for w in caught if w.category is RuntimeWarning]
    assert not garbage, [str(w.message) for w in garbage]
    if any(w.category is Image.DecompressionBombWarning for w in caught):
        assert image is None
    assert limit_before == Image.MAX_IMAGE_PIXELS
    return image


@FUZZ
@given(encoded_images())
def test_encoded_files_decode_or_raise_typed_error(data: bytes) -> None:
    assert_defined_outcome(data)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_decode_or_raise_typed_error(data: bytes) -> None:
    assert_defined_outcome(data)


@FUZZ
@given(pil_images())
def test_pil_images_of_any_mode_convert_or_raise_typed_error(image: Image.Image) -> None:
    assert_defined_outcome(image)


@FUZZ
@given(arrays)
def test_arrays_of_any_dtype_and_shape_convert_or_raise_typed_error(array: np.ndarray) -> None:
    assert_defined_outcome(array)


@FUZZ
@given(non_images)
def test_non_image_objects_raise_typed_error(source: object) -> None:
    assert_defined_outcome(source)


@FUZZ
@given(encoded_images())
def test_files_on_disk_load_like_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.mktemp("img") / "input.bin"
    path.write_bytes(data)
    from_path, from_bytes = assert_defined_outcome(path), assert_defined_outcome(data)
    assert (from_path is None) == (from_bytes is None)
    if from_path is not None and from_bytes is not None:
        assert from_path.tobytes() == from_bytes.tobytes()
