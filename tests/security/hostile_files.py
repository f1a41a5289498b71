"""Small files that stall Pillow's pure-Python parsers inside every size limit (the red-team's issue #13 set).

Each builder returns the encoded bytes; all are built in well under a second. ``HOSTILE_FILES`` maps a
name to its builder, for the DoS test and for ``benchmarks``-style measurements of time and memory.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

from PIL import Image

import psaguard.images.checks as caps

MIB = 1024 * 1024


def _encoded(fmt: str, size: tuple[int, int] = (64, 64), **params: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buffer, fmt, **params)
    return buffer.getvalue()


def pbm_comments(size: int = MIB) -> bytes:
    """A plain PBM whose pixel data is ``size`` bytes of ``#\\n`` comments (Pillow skips them in Python)."""
    return b"P1\n8 8\n" + b"#\n" * (size // 2) + b"0 " * 64


def ppm_plain(side: int = 2000) -> bytes:
    """A plain (ASCII) PGM of ``side``² pixels, decoded by a Python loop in Pillow."""
    return b"P2\n%d %d\n255\n" % (side, side) + b"1 " * (side * side)


def bmp_rle8(width: int = 6000, height: int = 6000) -> bytes:
    """A 26 KB RLE8 BMP: end-of-line escapes make Pillow's Python RLE decoder pad every row byte by byte."""
    rle = b"\x01\x07\x00\x00" * height + b"\x00\x01"  # per row: one pixel, then end-of-line padding
    header_size, palette = 40, b"\x00\x00\x00\x00" * 256
    offset = 14 + header_size + len(palette)
    info = struct.pack("<IiiHHIIiiII", header_size, width, height, 1, 8, 1, len(rle), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(rle), 0, 0, offset) + info + palette + rle


def jpeg_progressive_scans(scans: int = 2000, side: int = 4096) -> bytes:
    """A progressive JPEG followed by ``scans`` empty refinement scans (libjpeg processes each one)."""
    data = _encoded("JPEG", (side, side), progressive=True, quality=50)
    last_sos = data.rfind(b"\xff\xda")
    length = struct.unpack(">H", data[last_sos + 2 : last_sos + 4])[0]
    header = data[last_sos : last_sos + 2 + length]
    return data[:-2] + header * scans + b"\xff\xd9"


def jpeg_app_markers(size: int = 60 * MIB) -> bytes:
    """A JPEG preceded by ``size`` bytes of empty APP1 markers (Pillow walks them one by one in Python)."""
    return b"\xff\xd8" + b"\xff\xe1\x00\x02" * (size // 4) + _encoded("JPEG")[2:]


def jpeg_fill(size: int = 60 * MIB) -> bytes:
    """A JPEG whose first marker is preceded by ``size`` 0xFF fill bytes (read one at a time)."""
    return b"\xff\xd8" + b"\xff" * size + _encoded("JPEG")[2:]


def tiff_strips(strips: int = 4 * MIB) -> bytes:
    """A 1024x1024 TIFF claiming ``strips`` strips: Pillow reads both offset arrays into Python tuples."""
    width = height = 1024
    entries = [
        (256, 4, 1, width),  # ImageWidth
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 4, strips, 0),  # StripOffsets (patched below)
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, 1),  # RowsPerStrip
        (279, 4, strips, 0),  # StripByteCounts (patched below)
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    offsets_at = 8 + ifd_size
    counts_at = offsets_at + 4 * strips
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = {273: offsets_at, 279: counts_at}.get(tag, value)
        packed = struct.pack("<HI", value, 0)[:4] if kind == 3 and count == 1 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    arrays = struct.pack("<I", counts_at + 4 * strips) * strips + struct.pack("<I", 1) * strips
    return b"II*\x00" + struct.pack("<I", 8) + ifd + arrays + b"\x00"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_chunks(chunks: int = 5_000_000) -> bytes:
    """A PNG with ``chunks`` empty ancillary chunks before its image data (each one a Python round trip)."""
    data = _encoded("PNG", (8, 8))
    ihdr_end = 8 + 25
    return data[:ihdr_end] + _png_chunk(b"zzZz", b"") * chunks + data[ihdr_end:]


def gif_extensions(blocks: int = 4_000_000) -> bytes:
    """A GIF with ``blocks`` one-byte comment sub-blocks before its first frame (read one by one)."""
    data = _encoded("GIF", (8, 8))
    first_block = 13 + 3 * 2 ** ((data[10] & 0x07) + 1) if data[10] & 0x80 else 13
    comment = b"\x21\xfe" + b"\x01x" * blocks + b"\x00"
    return data[:first_block] + comment + data[first_block:]


def webp_chunks(chunks: int = 4_000_000) -> bytes:
    """A lossy WebP extended with ``chunks`` empty unknown chunks (RIFF size patched)."""
    data = _encoded("WEBP", (8, 8))
    body = data[12:] + b"ZZZZ\x00\x00\x00\x00" * chunks
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


HOSTILE_FILES: dict[str, Callable[[], bytes]] = {
    "pbm_comments_1mib": pbm_comments,
    "pbm_comments_4mib": lambda: pbm_comments(4 * MIB),
    "pgm_plain_4mp": ppm_plain,
    "bmp_rle8_26kb": bmp_rle8,
    "jpeg_2000_empty_scans": jpeg_progressive_scans,
    "jpeg_20000_empty_scans": lambda: jpeg_progressive_scans(20_000),
    "jpeg_60mib_app1_markers": jpeg_app_markers,
    "jpeg_60mib_ff_fill": jpeg_fill,
    "tiff_4m_strips": tiff_strips,
    "png_5m_empty_chunks": png_chunks,
    "gif_4m_comment_subblocks": gif_extensions,
    "webp_4m_unknown_chunks": webp_chunks,
}
"""name -> builder of every hostile file the DoS test and the measurement run; all are refused."""

AT_THE_CAPS: dict[str, Callable[[], bytes]] = {
    "png_chunks_below_cap": lambda: png_chunks(caps.MAX_PNG_CHUNKS - 10),
    "jpeg_markers_below_cap": lambda: jpeg_app_markers(4 * (caps.MAX_JPEG_MARKERS - 10)),
    "jpeg_fill_below_cap": lambda: jpeg_fill(caps.MAX_JPEG_SKIPPED_BYTES - 10),
    "jpeg_scans_below_cap": lambda: jpeg_progressive_scans(caps.MAX_JPEG_SCAN_PIXELS // 4096**2 - 12),
    "jpeg_40mp_scans_below_cap": lambda: jpeg_progressive_scans(caps.MAX_JPEG_SCAN_PIXELS // 6300**2 - 12, 6300),
    "gif_subblocks_below_cap": lambda: gif_extensions(caps.MAX_GIF_SUBBLOCKS - 10),
    "webp_chunks_below_cap": lambda: webp_chunks(caps.MAX_WEBP_CHUNKS - 10),
    "tiff_strips_at_cap": lambda: tiff_strips(caps.MAX_TIFF_STRIPS),
}
"""The same files with as many elements as the caps let through: the worst inputs that are parsed."""
