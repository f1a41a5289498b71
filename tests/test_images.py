"""Hostile and odd images each get a defined outcome: an RGB image or a typed InvalidImageError."""

from __future__ import annotations

import contextlib
import io
import os
import struct
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from psaguard.errors import InvalidImageError
from psaguard.images.decode import ALLOWED_FORMATS, OPT_IN_FORMATS, image_size, load_image

EVERY_FORMAT = ALLOWED_FORMATS + OPT_IN_FORMATS


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose (valid, CRC-correct) header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(100_000, 100_000), (2_000_000_000, 2), (5_000, 5_000)])
def test_decompression_bomb_is_refused_from_the_header_before_decoding(size: tuple[int, int]) -> None:
    start = time.perf_counter()
    with pytest.raises(InvalidImageError, match="exceeds"):
        load_image(_png_claiming(*size), max_pixels=1_000_000)
    assert time.perf_counter() - start < 1.0


def test_pixel_limit_is_the_configured_one_and_pil_global_is_untouched() -> None:
    data = _encode(Image.new("RGB", (64, 64)), "PNG")
    limit_before = Image.MAX_IMAGE_PIXELS
    assert load_image(data, max_pixels=64 * 64).size == (64, 64)
    with pytest.raises(InvalidImageError, match="limit of 4095 pixels"):
        load_image(data, max_pixels=64 * 64 - 1)
    assert limit_before == Image.MAX_IMAGE_PIXELS


def test_extreme_aspect_ratio_is_refused_before_a_processor_blows_it_up() -> None:
    with pytest.raises(InvalidImageError, match="aspect-ratio"):
        load_image(Image.new("RGB", (400_000, 1)))
    assert load_image(Image.new("RGB", (1000, 10))).size == (1000, 10)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", b"GIF89a", b"\x89PNG\r\n\x1a\n", b"%PDF-1.4\n", b"<svg xmlns='http://www.w3.org/2000/svg'/>"],
)
def test_empty_and_wrong_format_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidImageError):
        load_image(data)


def test_truncated_file_is_refused_not_half_decoded() -> None:
    data = _encode(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")
    with pytest.raises(InvalidImageError, match=r"cannot decode|not a readable"):
        load_image(data[: len(data) // 2])


def test_formats_outside_the_allow_list_are_refused() -> None:
    """EPS would run Ghostscript on attacker bytes; TGA/PCX/ICO are parsers a guard does not need."""
    rgb = Image.new("RGB", (8, 8), "red")
    for fmt in ("EPS", "TGA", "PCX", "ICO"):
        with pytest.raises(InvalidImageError, match="accepted format"):
            load_image(_encode(rgb, fmt))


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        *[("CMYK", "JPEG"), ("P", "PNG"), ("PA", "TIFF"), ("LA", "PNG"), ("I", "TIFF"), ("I;16", "PNG")],
        *[("F", "TIFF"), ("1", "PNG"), ("YCbCr", "JPEG"), ("LAB", "TIFF"), ("RGBA", "WEBP"), ("L", "GIF")],
    ],
)
def test_odd_modes_become_rgb(mode: str, fmt: str) -> None:
    image = load_image(_encode(Image.new(mode, (9, 7)), fmt), formats=EVERY_FORMAT)
    assert (image.mode, image.size) == ("RGB", (9, 7))


def test_sixteen_bit_samples_are_clipped_as_the_model_behind_the_guard_sees_them() -> None:
    from transformers.image_transforms import convert_to_rgb

    ramp = Image.fromarray(np.array([[0, 100, 200, 300, 65535]], dtype=np.uint16))
    image = load_image(_encode(ramp, "PNG"))
    assert np.asarray(image)[0, :, 0].tolist() == [0, 100, 200, 255, 255]
    # What Pillow and Hugging Face processors make of the same image, i.e. what the model reads.
    assert np.array_equal(np.asarray(image), np.asarray(ramp.convert("RGB")))
    assert np.array_equal(np.asarray(image), np.asarray(convert_to_rgb(ramp, return_numpy=True)))


def test_float_image_with_nan_is_refused() -> None:
    samples = np.full((4, 4), np.nan, dtype=np.float32)
    with pytest.raises(InvalidImageError, match="NaN"):
        load_image(_encode(Image.fromarray(samples), "TIFF"), formats=EVERY_FORMAT)


def test_transparency_is_composited_onto_white_like_hf_processors() -> None:
    hidden = Image.new("RGBA", (4, 4), (200, 0, 0, 0))  # red under zero alpha: invisible
    assert np.asarray(load_image(hidden)).max(axis=(0, 1)).tolist() == [255, 255, 255]


def test_colour_keyed_rgb_png_is_composited_too() -> None:
    keyed = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(keyed, "PNG", transparency=(10, 20, 30))
    assert np.asarray(load_image(keyed.getvalue()))[0, 0].tolist() == [255, 255, 255]


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), color) for color in ("red", "blue", "green")]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10)
    red, green, blue = np.asarray(load_image(data))[0, 0]
    assert red > 200 and green < 50 and blue < 50


def test_exif_rotation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image = load_image(_encode(Image.new("RGB", (40, 10)), "JPEG", exif=exif))
    assert image.size == (10, 40)


def test_caller_image_is_not_modified() -> None:
    frames = [Image.new("RGB", (8, 8), color) for color in ("red", "blue", "green")]
    animated = Image.open(io.BytesIO(_encode(frames[0], "GIF", save_all=True, append_images=frames[1:])))
    animated.seek(2)
    state = (animated.tell(), animated.mode, animated.tobytes())
    rgb = Image.new("RGB", (8, 8))
    assert load_image(rgb) is not rgb
    frame = np.asarray(load_image(animated))[0, 0]
    assert (animated.tell(), animated.mode, animated.tobytes()) == state
    assert frame[1] > 100 and frame[0] < 50  # green: the frame the caller is on, as a processor would read it


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((2, 2, 3), 200, np.uint8), 200),
        (np.full((2, 2), 200, np.uint16), 200),
        (np.full((2, 2), 257 * 10, np.uint16), 255),  # clipped, as Pillow reads a uint16 array
        (np.full((2, 2), 0.5, np.float32), 128),
        (np.full((2, 2, 1), True), 255),
        (np.full((2, 2, 3), 7, np.int64), 7),  # np.array of Python ints
        (np.full((2, 2, 4), 9, np.uint8), 246),  # RGBA: 9 at alpha 9/255 over white
    ],
)
def test_array_conventions(array: np.ndarray, expected: int) -> None:
    assert int(np.asarray(load_image(array))[0, 0, 0]) == expected


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((0, 4, 3), np.uint8),
        np.zeros((3, 8, 8), np.uint8),  # channels first
        np.zeros((4, 4, 2), np.uint8),
        np.zeros(5, np.uint8),
        np.full((2, 2), 300, np.int32),
        np.full((2, 2), 2.0, np.float64),
        np.full((2, 2), np.inf, np.float32),
        np.zeros((2, 2), np.complex64),
        np.zeros((2, 2), object),
        np.zeros((2, 2), "datetime64[s]"),
    ],
)
def test_arrays_outside_the_conventions_are_refused(array: np.ndarray) -> None:
    with pytest.raises(InvalidImageError):
        load_image(array)


@pytest.mark.parametrize("source", [None, 3, 2.5, ["a"], {"image": b""}, object(), "no/such/file.png", "bad\x00path"])
def test_non_images_are_refused(source: object) -> None:
    with pytest.raises(InvalidImageError):
        load_image(source)  # type: ignore[arg-type]


def test_directory_and_empty_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match="regular file"):
        load_image(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InvalidImageError, match="empty"):
        load_image(tmp_path / "empty.png")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_path_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with ThreadPoolExecutor(1) as pool:  # a blocking read would hang this future, not the suite
        future = pool.submit(load_image, fifo)
        with pytest.raises(InvalidImageError, match="regular file"):
            future.result(timeout=5)


def test_encoded_size_limit_is_checked_before_reading(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match="exceeds the limit of 10 bytes"):
        load_image(b"x" * 11, max_bytes=10)


def test_loading_never_touches_process_wide_warnings_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """warnings.catch_warnings swaps a process-global list: another thread's filters would flicker."""

    def forbidden(*args, **kwargs):
        raise AssertionError("load_image changed the process-wide warnings state")

    for name in ("catch_warnings", "simplefilter", "filterwarnings", "resetwarnings"):
        monkeypatch.setattr(warnings, name, forbidden)
    exif = Image.Exif()
    exif[0x0112] = 3
    for source in (_encode(Image.new("CMYK", (8, 8)), "JPEG", exif=exif), _png_claiming(10**5, 10**5)):
        with contextlib.suppress(InvalidImageError):
            load_image(source, max_pixels=10_000)


def test_loading_from_16_threads_matches_serial() -> None:
    rng = np.random.default_rng(0)
    sources = [_encode(Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)), f) for f in ("PNG", "WEBP")]
    sources = sources * 16
    serial = [load_image(s).tobytes() for s in sources]
    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(lambda s: load_image(s).tobytes(), sources)) == serial


class _BrokenPath:
    def __fspath__(self) -> str:
        raise RuntimeError("no path today")


def _with_transparency(value: object) -> Image.Image:
    image = Image.new("RGB", (4, 4))
    image.info["transparency"] = value
    return image


def _released() -> memoryview:
    view = memoryview(b"\x89PNG\r\n\x1a\n")
    view.release()
    return view


@pytest.mark.parametrize(
    "source",
    [_released(), _BrokenPath(), *(_with_transparency(v) for v in ("x", (1, 2, 3, 4, 5), 1e9, object()))],
    ids=["released-memoryview", "pathlike-raising", "tr-str", "tr-tuple", "tr-float", "tr-object"],
)
def test_broken_caller_objects_are_typed_errors(source: object) -> None:
    with pytest.raises(InvalidImageError):
        load_image(source)  # type: ignore[arg-type]


def test_premultiplied_la_images_are_accepted_like_la() -> None:
    la = Image.new("LA", (4, 4), (100, 255))
    assert np.array_equal(np.asarray(load_image(la.convert("La"))), np.asarray(load_image(la)))


def test_plain_ppm_and_bigtiff_are_refused_with_a_reason_binary_ppm_is_read() -> None:
    with pytest.raises(InvalidImageError, match="plain"):
        load_image(b"P3\n1 1\n255\n1 2 3\n", formats=EVERY_FORMAT)
    with pytest.raises(InvalidImageError, match="BigTIFF"):
        load_image(b"II+\x00" + b"\x00" * 20, formats=EVERY_FORMAT)
    binary = _encode(Image.new("L", (8, 8), 9), "PPM")
    assert np.asarray(load_image(binary, formats=EVERY_FORMAT))[0, 0, 0] == 9


def test_binary_ppm_headers_padded_with_comments_are_refused_when_ppm_is_enabled() -> None:
    # Pillow reads header comments a byte at a time; the header must fit in MAX_PPM_HEADER_BYTES.
    start = time.process_time()
    with pytest.raises(InvalidImageError, match="header bytes"):
        load_image(b"P4\n" + b"#\n" * 600_000 + b"8 8\n" + bytes(8), formats=EVERY_FORMAT)
    with pytest.raises(InvalidImageError, match="header bytes"):
        load_image(b"P5\n# a comment that never ends" + b"x" * 100_000, formats=EVERY_FORMAT)
    assert time.process_time() - start < 1.0
    assert load_image(b"P5\n# short comment\n2 1\n255\n\x00\xff", formats=EVERY_FORMAT).size == (2, 1)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_image_size_reads_the_oriented_size_without_decoding(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: width and height swap once transposed
    path = tmp_path / f"wide.{fmt.lower()}"
    Image.new("RGB", (40, 10), "white").save(path, format=fmt, exif=exif)
    assert load_image(path).size == (10, 40)

    def no_decoding(self):
        raise AssertionError("image_size decoded the pixels")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(type(Image.open(path)), "load", no_decoding)
    assert image_size(path) == (10, 40)


def test_image_size_applies_the_header_limits(tmp_path: Path) -> None:
    Image.new("RGB", (400, 2)).save(tmp_path / "strip.png")
    with pytest.raises(InvalidImageError, match="aspect-ratio"):
        image_size(tmp_path / "strip.png")
    with pytest.raises(InvalidImageError, match="exceeds the limit"):
        image_size(tmp_path / "strip.png", max_pixels=799, max_aspect_ratio=1000)
