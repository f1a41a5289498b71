"""Decoding in worker processes: same images as load_image, and a decode over its time or memory is killed."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from hostile_files import AT_THE_CAPS, HOSTILE_FILES
from PIL import Image

from psaguard.errors import InvalidImageError
from psaguard.images.decode import load_image
from psaguard.images.isolated import IsolatedImageLoader

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="worker pipes need POSIX")


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64 * 48 * 3, dtype=np.uint8).reshape(48, 64, 3)).save(buffer, "PNG")
    return buffer.getvalue()


def test_workers_decode_what_load_image_decodes_and_refuse_what_it_refuses(tmp_path) -> None:
    (tmp_path / "a.png").write_bytes(_png())
    with IsolatedImageLoader(workers=1, timeout_s=60) as loader:
        for source in (_png(), tmp_path / "a.png", Image.open(io.BytesIO(_png()))):
            assert np.array_equal(np.asarray(loader.load(source)), np.asarray(load_image(_png())))
        with pytest.raises(InvalidImageError, match="more than 20,000 chunks"):
            loader.load(HOSTILE_FILES["png_5m_empty_chunks"]())
        with pytest.raises(InvalidImageError):
            loader.load(b"not an image")


def test_a_decode_over_its_time_is_killed_and_the_loader_stays_usable() -> None:
    slow = AT_THE_CAPS["jpeg_scans_below_cap"]()  # ~0.2 s of CPU: far over a 10 ms budget
    with IsolatedImageLoader(workers=1, timeout_s=0.01) as loader:
        worker = loader._idle.queue[0]
        with pytest.raises(InvalidImageError, match="took longer"):
            loader.load(slow)
        assert worker is not None and not worker.alive  # the process was killed, not left running
        loader.timeout_s = 60
        assert loader.load(_png()).size == (64, 48)  # a fresh worker took its slot


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the memory cap uses Linux's RLIMIT_AS")
def test_a_decode_over_its_memory_fails_inside_the_worker() -> None:
    big = AT_THE_CAPS["jpeg_scans_below_cap"]()  # 16 M pixels: ~130 MB to decode
    with IsolatedImageLoader(workers=1, timeout_s=60, memory_limit_mb=40) as loader:
        with pytest.raises(InvalidImageError):
            loader.load(big)
        assert loader.load(_png()).size == (64, 48)
