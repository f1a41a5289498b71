"""Atomic writes and checked safetensors I/O."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from psaguard.errors import CheckpointError

__all__ = [
    "CHECKSUM_KEY",
    "CONFIG_DIGEST_KEY",
    "atomic_write",
    "atomic_write_text",
    "load_tensors",
    "read_metadata",
    "save_tensors",
    "tensors_digest",
]

logger = logging.getLogger(__name__)

CHECKSUM_KEY = "psaguard_sha256"
"""safetensors metadata key holding :func:`tensors_digest` of the file's tensors, checked on load.

safetensors validates its header but not the tensor bytes, so without it a flipped bit in the weights loads
silently. It detects corruption and naive tampering, not a deliberate forger (who can recompute it). A file
without it (re-saved by another tool, which drops psaguard's metadata) is refused unless the caller opts in
with ``allow_unverified=True``."""

CONFIG_DIGEST_KEY = "psaguard_config_sha256"
"""safetensors metadata key holding the SHA-256 of the config file saved beside the weights, so that a config
edited after saving (a policy switched to 'allow', a threshold of 1.0) is reported at load time."""


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
    metadata = {**(metadata or {}), CHECKSUM_KEY: tensors_digest(cpu)}
    return atomic_write(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``tensors`` (order-independent)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a safetensors file (its header only); :class:`CheckpointError` if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing weights file {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"corrupt or truncated weights file {path}: {err}") from err


def load_tensors(
    path: str | Path,
    expected: Mapping[str, tuple[torch.Size, torch.dtype]] | None = None,
    *,
    allow_unverified: bool = False,
) -> dict[str, torch.Tensor]:
    """Load a safetensors file; with ``expected``, check names and shapes and raise :class:`CheckpointError`.

    The file must carry its :data:`CHECKSUM_KEY`; ``allow_unverified=True`` loads one without it (logged).
    """
    path = Path(path)
    metadata = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"corrupt or truncated weights file {path}: {err}") from err
    _check_checksum(path, metadata.get(CHECKSUM_KEY), tensors, allow_unverified)
    nonfinite = sorted(name for name, t in tensors.items() if t.is_floating_point() and not bool(t.isfinite().all()))
    if nonfinite:
        raise CheckpointError(f"weights in {path} hold NaN or infinite values: {nonfinite[:5]}")
    if expected is not None:
        _check_expected(path, tensors, expected)
    return tensors


def _check_checksum(path: Path, saved: str | None, tensors: Mapping[str, torch.Tensor], allow_unverified: bool) -> None:
    """The tensors match the file's saved checksum; a file without one loads only when ``allow_unverified``."""
    if saved is None:
        if not allow_unverified:
            raise CheckpointError(
                f"weights in {path} carry no {CHECKSUM_KEY} checksum (re-saved by another tool, or tampered "
                "with), so they cannot be verified; pass allow_unverified=True to load them anyway"
            )
        logger.warning("loading unverified weights %s (no %s metadata)", path, CHECKSUM_KEY)
    elif saved != tensors_digest(tensors):
        raise CheckpointError(f"weights in {path} do not match their checksum: the file is corrupt or was modified")


def _check_expected(
    path: Path, tensors: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[torch.Size, torch.dtype]]
) -> None:
    """The file holds exactly the ``expected`` names, each of its expected shape."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = sorted(
        f"{name}: file {tuple(tensors[name].shape)}, module {tuple(shape)}"
        for name, (shape, _) in expected.items()
        if name in tensors and tensors[name].shape != shape
    )
    if missing or extra or wrong:
        raise CheckpointError(
            f"weights in {path} do not match the config: missing {missing}, unexpected {extra}, wrong shapes {wrong}"
        )
