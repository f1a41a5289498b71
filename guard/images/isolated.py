"""Image decoding in worker processes that are killed when a decode overruns its time or memory budget.

:func:`psaguard.images.load_image` bounds every known hostile file with structural pre-checks, but it runs in
the caller's thread, and Python cannot stop a thread: a decode that an ``asyncio.wait_for`` abandoned keeps
its CPU. :class:`IsolatedImageLoader` decodes encoded bytes and files in separate processes instead. A
decode that takes longer than ``timeout_s`` is killed with its process (which is replaced), and each worker
caps the address space its decodes may add (``memory_limit_mb``, Linux ``RLIMIT_AS``), so an
allocation over the cap fails inside the worker. Both end as :class:`~psaguard.errors.InvalidImageError`.

Use it in front of a guard, which accepts the decoded RGB image as is::

    with IsolatedImageLoader(workers=2, timeout_s=1.0) as loader:
        verdict = guard.classify(loader.load(request_bytes), prompt)

Nothing is global: the loader owns its processes and ``close()`` (or the ``with`` block) ends them.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

try:
    import resource
except ImportError:  # Windows: decodes still time out, but have no memory cap
    resource = None  # type: ignore[assignment]

from psaguard.checkpoints.files import read_regular_file
from psaguard.errors import InvalidImageError
from psaguard.images.decode import ALLOWED_FORMATS, MAX_IMAGE_BYTES, ImageFormat, ImageInput, load_image

__all__ = ["IsolatedImageLoader"]

logger = logging.getLogger(__name__)

# A fresh interpreter per worker (not fork: forking a process that holds torch threads or locks is unsafe;
# not multiprocessing's spawn, which re-imports the caller's __main__ and so needs its `if __name__` guard).
_START_TIMEOUT_S = 60.0
_WORKER_CODE = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[3]); "
    "from psaguard.images.isolated import _worker_main; _worker_main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[4])"
)


class IsolatedImageLoader:
    """:func:`~psaguard.images.load_image` for bytes and paths, run in worker processes with hard limits.

    PIL images and arrays are already decoded and are converted in the calling process. Thread-safe: each
    call takes an idle worker (waiting for one if all are busy). A killed worker is replaced on the next call
    that needs it, which then pays its start-up (about half a second).

    Args:
        workers: Worker processes, i.e. decodes that can run at once.
        timeout_s: Wall time a decode may take before its worker is killed.
        memory_limit_mb: Address space a worker may add to what it holds at start-up; None for no cap.
        max_pixels: As in :func:`~psaguard.images.load_image`.
        formats: As in :func:`~psaguard.images.load_image`.
    """

    def __init__(
        self,
        workers: int = 1,
        timeout_s: float = 1.0,
        memory_limit_mb: int | None = 1024,
        max_pixels: int = 40_000_000,
        formats: Sequence[ImageFormat] = ALLOWED_FORMATS,
    ) -> None:
        if workers < 1 or timeout_s <= 0 or (memory_limit_mb is not None and memory_limit_mb < 1):
            raise ValueError("workers and memory_limit_mb must be >= 1 and timeout_s > 0")
        self.timeout_s = timeout_s
        self._settings = (max_pixels, tuple(formats), memory_limit_mb)
        self.max_pixels = max_pixels
        self._idle: queue.Queue[_Worker | None] = queue.Queue()
        for _ in range(workers):
            self._idle.put(_Worker(self._settings))

    def load(self, source: ImageInput) -> Image.Image:
        """An RGB image of ``source``, or :class:`InvalidImageError` (also when the decode overran its limits)."""
        if isinstance(source, (Image.Image, np.ndarray)):
            return load_image(source, self.max_pixels, formats=self._settings[1])
        data = _encoded(source)
        worker = self._idle.get()
        try:
            worker = worker if worker is not None and worker.alive else _Worker(self._settings)
            image = worker.decode(data, self.timeout_s)
        except _WorkerLost as err:
            worker.kill()
            worker = None  # replaced by the next call that takes this slot
            raise InvalidImageError(str(err)) from None
        finally:
            self._idle.put(worker)
        return image

    def close(self) -> None:
        """End the worker processes (idle ones at once; a busy one when its call returns it)."""
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                return
            if worker is not None:
                worker.kill()

    def __enter__(self) -> IsolatedImageLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _WorkerLost(Exception):
    """The worker overran its time, or died; it must be killed and replaced."""


class _Worker:
    """One decoding process and the parent's ends of its two pipes."""

    def __init__(self, settings: tuple[int, tuple[ImageFormat, ...], int | None]) -> None:
        to_child, child_in = _pipe()
        child_out, from_child = _pipe()
        args = [str(child_in.fileno()), str(child_out.fileno()), json.dumps(sys.path), json.dumps(settings)]
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE, *args], pass_fds=(child_in.fileno(), child_out.fileno())
        )
        child_in.close()
        child_out.close()
        self.requests, self.replies = to_child, from_child
        # Wait until it has imported its modules, so a request's timeout counts the decode only.
        if not self.replies.poll(_START_TIMEOUT_S) or self.replies.recv_bytes() != b"ready":
            self.kill()
            raise InvalidImageError("the image decoding process did not start")

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def decode(self, data: bytes, timeout_s: float) -> Image.Image:
        try:
            self.requests.send_bytes(data)
            if not self.replies.poll(timeout_s):
                raise _WorkerLost(f"image decode took longer than {timeout_s:g} s; its process was killed")
            reply = json.loads(self.replies.recv_bytes())
            if reply["error"] is not None:
                raise InvalidImageError(reply["error"])
            return Image.frombytes(reply["mode"], tuple(reply["size"]), self.replies.recv_bytes())
        except (EOFError, OSError) as err:
            raise _WorkerLost(f"the image decoding process died ({type(err).__name__})") from err

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=5)
        self.requests.close()
        self.replies.close()


def _pipe() -> tuple[Connection, Connection]:
    """(write end, read end) of an OS pipe as byte-message connections (with ``poll`` timeouts)."""
    read_fd, write_fd = os.pipe()
    return Connection(write_fd, readable=False), Connection(read_fd, writable=False)


def _encoded(source: Any) -> bytes:
    """The encoded bytes of a bytes-like source or a path, read in the caller's process (bounded, no parsing)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        try:
            return bytes(source)
        except (TypeError, ValueError) as err:  # e.g. a released memoryview
            raise InvalidImageError(f"cannot read image bytes: {err}") from err
    if isinstance(source, (str, os.PathLike)):
        try:
            path = Path(source)
        except Exception as err:  # the caller's __fspath__ may raise anything: fail closed
            raise InvalidImageError(f"cannot use {type(source).__name__} as an image path: {err}") from err
        return read_regular_file(path, MAX_IMAGE_BYTES, InvalidImageError, "image file")
    raise InvalidImageError(f"unsupported image input of type {type(source).__name__}")


def _worker_main(requests_fd: int, replies_fd: int, settings: str) -> None:
    """Worker loop: decode each request; reply a JSON header (error, or mode and size), then the pixels."""
    max_pixels, formats, memory_limit_mb = json.loads(settings)
    requests, replies = Connection(requests_fd, writable=False), Connection(replies_fd, readable=False)
    if memory_limit_mb is not None:
        _limit_memory(memory_limit_mb)
    replies.send_bytes(b"ready")
    while True:
        try:
            data = requests.recv_bytes()
        except EOFError:
            return
        try:
            image = load_image(data, max_pixels, formats=formats)
            pixels = image.tobytes()
        except (InvalidImageError, MemoryError) as err:  # MemoryError: over the address-space cap
            message = str(err) or "decoding the image needs more memory than the loader's limit"
            replies.send_bytes(json.dumps({"error": message}).encode())
            continue
        replies.send_bytes(json.dumps({"error": None, "mode": image.mode, "size": image.size}).encode())
        replies.send_bytes(pixels)


def _limit_memory(limit_mb: int) -> None:
    """Cap the worker's address space at what it holds now plus ``limit_mb`` (Linux; elsewhere no cap)."""
    if resource is None or not os.path.exists("/proc/self/status"):
        logger.warning("no memory cap for image decoding on this platform (needs Linux's RLIMIT_AS)")
        return
    with open("/proc/self/status") as handle:
        held_kb = next(int(line.split()[1]) for line in handle if line.startswith("VmSize:"))
    cap = held_kb * 1024 + limit_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
