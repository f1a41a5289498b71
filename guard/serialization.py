"""Atomic writes and checked safetensors I/O."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from psaguard.errors import CheckpointError

__all__ = ["atomic_write", "atomic_write_text", "load_tensors", "save_tensors"]


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    A crash at any point leaves either the old file or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Save tensors as safetensors, atomically, detached and contiguous on the CPU."""
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


def load_tensors(
    path: str | Path, expected: Mapping[str, tuple[torch.Size, torch.dtype]] | None = None
) -> dict[str, torch.Tensor]:
    """Load a safetensors file; with ``expected``, check names and shapes and raise :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing weights file {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"corrupt or truncated weights file {path}: {err}") from err
    if expected is not None:
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        wrong = sorted(
            f"{name}: file {tuple(tensors[name].shape)}, module {tuple(shape)}"
            for name, (shape, _) in expected.items()
            if name in tensors and tensors[name].shape != shape
        )
        if missing or extra or wrong:
            raise CheckpointError(
                f"weights in {path} do not match the config: missing {missing}, unexpected {extra}, "
                f"wrong shapes {wrong}"
            )
    return tensors
