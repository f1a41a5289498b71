"""Structural pre-checks of encoded images: the format from the magic bytes, then bounded walks of its structure.

Pillow parses headers, chunk lists, marker lists and tag tables in Python, one element at a time, before
(and sometimes while) its C decoders run. A small file made of millions of empty elements stalls it inside
every size limit: 60 MiB of empty JPEG APP1 markers took 18 s and 2 GB, 5 M empty PNG chunks 9 s, a TIFF
claiming 4 M strips 9 s and 1.4 GB, a 24 KB RLE8 BMP 3.3 s, a 1 MiB plain PBM of comments 10 s (measured on
psaguard's main before this module; docs/security.md has the numbers after). :func:`check_structure` walks
the same structure first, with C-speed scans where it can and a hard cap on the number of elements, and
raises :class:`~psaguard.errors.InvalidImageError` before Pillow sees a file over a cap.

Every cap sits far above what real encoders write (see the constants), so real images pass.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable

from psaguard.errors import InvalidImageError

__all__ = [
    "MAX_GIF_SUBBLOCKS",
    "MAX_JPEG_MARKERS",
    "MAX_JPEG_SCANS",
    "MAX_JPEG_SCAN_PIXELS",
    "MAX_JPEG_SKIPPED_BYTES",
    "MAX_PNG_CHUNKS",
    "MAX_PPM_HEADER_BYTES",
    "MAX_TIFF_STRIPS",
    "MAX_TIFF_TAGS",
    "MAX_TIFF_VALUES",
    "MAX_WEBP_CHUNKS",
    "check_structure",
    "refusal_reason",
    "sniff_format",
]

MAX_PNG_CHUNKS = 20_000
"""Chunks in a PNG. Encoders write IDAT chunks of 8-64 KiB, so a 64 MiB file holds at most ~8,000."""

MAX_JPEG_MARKERS = 1000
"""Marker segments before the first scan (EXIF, ICC profile parts of 64 KiB each, tables, comments)."""

MAX_JPEG_SKIPPED_BYTES = 1024
"""Fill (0xFF) and junk bytes between markers before the first scan; encoders write none."""

MAX_JPEG_SCANS = 100
"""Scans in a JPEG file. A progressive JPEG has ~10 (libjpeg's default script), an MPO a few per picture;
each scan is a pass of libjpeg over the whole image, so 2,000 empty ones took 2 s on 16 M pixels."""

MAX_JPEG_SCAN_PIXELS = 1_000_000_000
"""Scans times pixels: 88 scans of 16.7 M pixels (1.5e9) took 0.4 s and 130 MB; a real 40 M-pixel
progressive JPEG (10 scans) needs 4e8."""

MAX_GIF_SUBBLOCKS = 4096
"""Extension sub-blocks (up to 255 bytes each) before the first frame: 1 MiB of comments and XMP."""

MAX_WEBP_CHUNKS = 20_000
"""RIFF chunks in a WebP (two or three per animation frame)."""

MAX_TIFF_TAGS = 1000
"""Entries in a TIFF's first directory (a real one has 10-40)."""

MAX_TIFF_STRIPS = 65_536
"""Strips or tiles of a TIFF: one row per strip of the tallest image the pixel limit allows still fits."""

MAX_TIFF_VALUES = 262_144
"""Values of any other multi-byte TIFF tag (Pillow makes each a Python object); a 16-bit palette has 196,608."""

MAX_PPM_HEADER_BYTES = 1024
"""Bytes of a PPM/PGM/PBM header, comments included (Pillow reads them one byte at a time)."""

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_FILL = re.compile(rb"\xff*")
_PPM_TOKEN = re.compile(rb"(?:\s|#[^\r\n]*[\r\n])*([^\s#]+)")  # a comment must end inside the cap
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOFn (not DHT, JPG, DAC)
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_TIFF_STRIP_TAGS = frozenset({273, 279, 324, 325})  # StripOffsets, StripByteCounts, TileOffsets, TileByteCounts


def sniff_format(data: bytes) -> str | None:
    """The Pillow format name the magic bytes of ``data`` announce, or None when they announce none read here."""
    if data.startswith(_PNG_MAGIC):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[:2] in (b"P4", b"P5", b"P6"):
        return "PPM"
    return None


def refusal_reason(data: bytes) -> str | None:
    """Why a file of a known family that :func:`sniff_format` does not name is refused, if it is one."""
    if data[:2] in (b"P1", b"P2", b"P3"):
        return "plain (ASCII) PBM/PGM/PPM files are refused: Pillow decodes them with a Python loop"
    if data[:4] in (b"II+\x00", b"MM\x00+"):
        return "BigTIFF files are refused"
    return None


def check_structure(data: bytes, fmt: str) -> None:
    """Raise :class:`InvalidImageError` if ``data`` (of format ``fmt``) has more elements than its caps.

    A structure cut short before the walk ends is refused as truncated.
    """
    try:
        _CHECKS[fmt](data)
    except (struct.error, IndexError) as err:
        raise InvalidImageError(f"{fmt} structure is truncated: {err}") from err


def _refuse(fmt: str, what: str, cap: int) -> InvalidImageError:
    return InvalidImageError(f"{fmt} file has more than {cap:,} {what}; refused before decoding (see docs/security.md)")


def _check_png(data: bytes) -> None:
    pos, chunks = len(_PNG_MAGIC), 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise _refuse("PNG", "chunks", MAX_PNG_CHUNKS)
        if kind == b"IEND":
            return
        pos += 12 + length


def _check_jpeg(data: bytes) -> None:
    pos, markers, skipped, pixels = 2, 0, 0, 1
    while pos < len(data):
        pos, skipped = _next_jpeg_marker(data, pos, skipped)
        if pos >= len(data):
            return
        marker = data[pos]
        markers += 1
        if markers > MAX_JPEG_MARKERS:
            raise _refuse("JPEG", "markers before the first scan", MAX_JPEG_MARKERS)
        if marker == 0xDA:  # start of scan: count every scan of the file at C speed
            _check_jpeg_scans(data, pos, pixels)
            return
        if marker in _JPEG_FRAMES:
            height, width = struct.unpack_from(">HH", data, pos + 4)
            pixels = max(1, height * width)
        if marker == 0xD9:
            return
        pos += _jpeg_segment_length(data, pos, marker)


def _next_jpeg_marker(data: bytes, pos: int, skipped: int) -> tuple[int, int]:
    """The position of the marker code at or after ``pos`` (past junk and 0xFF fill bytes) and the bytes skipped
    so far; more than ``MAX_JPEG_SKIPPED_BYTES`` skipped is refused."""
    if data[pos] != 0xFF:  # junk between markers, skipped byte by byte by Pillow
        found = data.find(b"\xff", pos, pos + MAX_JPEG_SKIPPED_BYTES + 1)
        skipped += (found if found >= 0 else MAX_JPEG_SKIPPED_BYTES + 1) - pos
        if found < 0 or skipped > MAX_JPEG_SKIPPED_BYTES:
            raise _refuse("JPEG", "bytes of junk between markers", MAX_JPEG_SKIPPED_BYTES)
        pos = found
    fill = _FILL.match(data, pos, pos + MAX_JPEG_SKIPPED_BYTES + 2)
    assert fill is not None  # matches the empty string at least
    skipped += fill.end() - pos - 1
    if skipped > MAX_JPEG_SKIPPED_BYTES:
        raise _refuse("JPEG", "fill bytes between markers", MAX_JPEG_SKIPPED_BYTES)
    return fill.end(), skipped


def _check_jpeg_scans(data: bytes, pos: int, pixels: int) -> None:
    """The scans from the first one (at ``pos``) on, each of ``pixels`` pixels, within the scan budgets."""
    # In entropy-coded data a 0xFF byte is followed by 0x00 or a restart marker, so every FF DA
    # pair left in the file starts a scan (of this picture or of a later MPO picture).
    scans = 1 + data.count(b"\xff\xda", pos)
    if scans > MAX_JPEG_SCANS:
        raise _refuse("JPEG", "scans", MAX_JPEG_SCANS)
    if scans * pixels > MAX_JPEG_SCAN_PIXELS:
        raise InvalidImageError(
            f"JPEG file has {scans} scans of {pixels:,} pixels, over the budget of {MAX_JPEG_SCAN_PIXELS:,} "
            "scanned pixels; refused before decoding (see docs/security.md)"
        )


def _jpeg_segment_length(data: bytes, pos: int, marker: int) -> int:
    """The bytes from the marker code at ``pos`` to the next marker: 1 for markers without a length."""
    if 0xD0 <= marker <= 0xD8 or marker == 0x01:
        return 1
    return 1 + struct.unpack_from(">H", data, pos + 1)[0]


def _check_gif(data: bytes) -> None:
    flags = data[10]
    pos = 13 + (3 * 2 ** ((flags & 0x07) + 1) if flags & 0x80 else 0)
    subblocks = 0
    while pos < len(data):
        introducer = data[pos]
        if introducer != 0x21:  # image descriptor (the first frame: C-decoded), trailer, or junk for Pillow
            return
        pos += 2
        while pos < len(data):
            size = data[pos]
            pos += 1 + size
            subblocks += 1
            if subblocks > MAX_GIF_SUBBLOCKS:
                raise _refuse("GIF", "extension sub-blocks before the first frame", MAX_GIF_SUBBLOCKS)
            if size == 0:
                break


def _check_webp(data: bytes) -> None:
    pos, chunks = 12, 0
    while pos + 8 <= len(data):
        chunks += 1
        if chunks > MAX_WEBP_CHUNKS:
            raise _refuse("WEBP", "chunks", MAX_WEBP_CHUNKS)
        size = struct.unpack_from("<I", data, pos + 4)[0]
        pos += 8 + size + (size & 1)


def _check_bmp(data: bytes) -> None:
    header_size = struct.unpack_from("<I", data, 14)[0]
    if header_size >= 40 and struct.unpack_from("<I", data, 30)[0] in (1, 2):
        # Pillow decodes RLE8/RLE4 with a Python loop: a 24 KB file of end-of-line codes took 3.3 s.
        raise InvalidImageError("run-length encoded (RLE) BMP files are refused: Pillow decodes them in Python")


def _check_tiff(data: bytes) -> None:
    endian = "<" if data[:2] == b"II" else ">"
    directory = struct.unpack_from(endian + "I", data, 4)[0]
    entries = struct.unpack_from(endian + "H", data, directory)[0]
    if entries > MAX_TIFF_TAGS:
        raise _refuse("TIFF", "tags in its first directory", MAX_TIFF_TAGS)
    for index in range(entries):
        tag, kind, count = struct.unpack_from(endian + "HHI", data, directory + 2 + 12 * index)
        if tag in _TIFF_STRIP_TAGS and count > MAX_TIFF_STRIPS:
            raise _refuse("TIFF", "strips or tiles", MAX_TIFF_STRIPS)
        if _TIFF_TYPE_SIZES.get(kind, 1) > 1 and count > MAX_TIFF_VALUES:
            raise _refuse("TIFF", f"values in tag {tag}", MAX_TIFF_VALUES)


def _check_ppm(data: bytes) -> None:
    # Binary PBM/PGM/PPM only (sniff_format): the plain ASCII variants are decoded by a Python loop.
    tokens = 3 if data[:2] == b"P4" else 4  # magic, width, height[, maxval]
    pos = 0
    for _ in range(tokens):
        match = _PPM_TOKEN.match(data, pos, MAX_PPM_HEADER_BYTES)
        if match is None:
            raise _refuse("PPM", "header bytes", MAX_PPM_HEADER_BYTES)
        pos = match.end()


_CHECKS: dict[str, Callable[[bytes], None]] = {
    "BMP": _check_bmp,
    "GIF": _check_gif,
    "JPEG": _check_jpeg,
    "PNG": _check_png,
    "PPM": _check_ppm,
    "TIFF": _check_tiff,
    "WEBP": _check_webp,
}
