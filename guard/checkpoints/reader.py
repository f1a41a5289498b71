"""Chosen tensors of a Hugging Face safetensors checkpoint, read without loading (or fetching) the rest.

A checkpoint is a directory written by ``save_pretrained``: ``config.json`` plus either one
``model.safetensors`` or shards listed in ``model.safetensors.index.json``. safetensors files are read
tensor by tensor (``safe_open`` maps the file and copies only what is asked for), and a hub checkpoint
fetches only the shards holding those tensors, through huggingface_hub's cache as transformers does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from psaguard.checkpoints.files import read_json_file
from psaguard.errors import CheckpointError

__all__ = ["MODEL_CONFIG_NAME", "SAFE_INDEX_NAME", "SAFE_WEIGHTS_NAME", "CheckpointReader", "local_dir"]

logger = logging.getLogger(__name__)

MODEL_CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_INDEX_NAME = "model.safetensors.index.json"
_MAX_INDEX_BYTES = 64 * 1024 * 1024  # a 70B model's index is well under 1 MB; bounds memory on a hostile file

Fetch = Callable[[Sequence[str]], None]
"""Makes the named files of a hub checkpoint present in its local snapshot directory."""


class CheckpointReader:
    """The tensor names of one checkpoint, where each lives, and reads of chosen tensors only.

    Build it with :meth:`open`. All errors are :class:`~psaguard.errors.CheckpointError`.
    """

    def __init__(self, directory: Path, fetch: Fetch | None = None) -> None:
        self.directory = directory
        self._fetch = fetch

    @classmethod
    def open(cls, path: str | Path, revision: str | None = None) -> CheckpointReader:
        """A local checkpoint directory, or a hub repo id (then only config and index are fetched now)."""
        local = local_dir(path, "a saved model")
        if local is not None:
            return cls(local)

        def fetch(files: Sequence[str]) -> None:
            _snapshot(str(path), revision, list(files))

        directory = _snapshot(str(path), revision, [MODEL_CONFIG_NAME, SAFE_INDEX_NAME])
        if not (directory / SAFE_INDEX_NAME).is_file():  # unsharded: the one file holds the tensor names too
            fetch([SAFE_WEIGHTS_NAME])
        return cls(directory, fetch)

    @cached_property
    def weight_map(self) -> dict[str, str]:
        """Tensor name -> file (relative to :attr:`directory`) holding it."""
        index = self.directory / SAFE_INDEX_NAME
        if index.is_file():
            return _read_index(index)
        single = self.directory / SAFE_WEIGHTS_NAME
        if single.is_file():
            with _opened(single) as handle:
                return dict.fromkeys(handle.keys(), SAFE_WEIGHTS_NAME)
        # pytorch_model.bin is a pickle: loading one runs code from the file, so it is not supported here.
        raise CheckpointError(f"no {SAFE_WEIGHTS_NAME} or {SAFE_INDEX_NAME} in {self.directory}")

    def files_for(self, names: Iterable[str]) -> list[str]:
        """The files that hold ``names`` (all of which must exist), sorted."""
        names = list(names)
        missing = sorted(set(names) - set(self.weight_map))
        if missing:
            raise CheckpointError(f"checkpoint {self.directory} lacks tensors {missing[:5]} ({len(missing)} missing)")
        return sorted({self.weight_map[name] for name in names})

    def read(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Exactly the tensors ``names``, on the CPU in their stored dtype; no other tensor is read."""
        names = list(names)
        files = self.files_for(names)
        if self._fetch is not None:
            self._fetch(files)
        tensors: dict[str, torch.Tensor] = {}
        for file in files:
            wanted = [name for name in names if self.weight_map[name] == file]
            with _opened(self.directory / file) as handle:
                tensors.update({name: handle.get_tensor(name) for name in wanted})
        logger.debug("read %d tensors from %d of the files of %s", len(tensors), len(files), self.directory)
        return tensors


def local_dir(path: str | Path, what: str) -> Path | None:
    """``path`` as a local directory, or None when it names a hub repo (``owner/name`` or ``name``).

    Raises :class:`CheckpointError` for a path that is neither: an existing file, or a path that looks local
    (``.``, ``/`` or ``~`` first, or more than one ``/``) but is no directory; the message names ``what``.
    """
    local = Path(path)
    if local.is_dir():
        return local
    if local.exists() or str(path).startswith((".", "/", "~")) or str(path).count("/") > 1:
        raise CheckpointError(f"{path} is not a directory holding {what}")
    return None


@contextmanager
def _opened(path: Path) -> Iterator[Any]:
    """``safe_open`` on the CPU; its errors (also those of reads inside the block) as :class:`CheckpointError`."""
    if not path.is_file():
        raise CheckpointError(f"missing weights file {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            yield handle
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"corrupt or truncated weights file {path}: {err}") from err


def _read_index(path: Path) -> dict[str, str]:
    raw = read_json_file(path, _MAX_INDEX_BYTES, CheckpointError, "safetensors index")
    weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise CheckpointError(f"{path} has no weight_map of tensor names to file names")
    # Shards must lie inside the checkpoint: a hostile index must not make us open other files.
    outside = sorted(file for file in set(weight_map.values()) if not _inside(file))
    if outside:
        raise CheckpointError(f"{path} names shard {outside[0]!r} outside the checkpoint directory")
    return weight_map


def _inside(file: str) -> bool:
    """Whether the shard name ``file`` (from an index) stays inside the checkpoint directory."""
    name = PurePosixPath(file)
    return bool(file) and not name.is_absolute() and ".." not in name.parts and "\\" not in file


def _snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot fetch {patterns} of model {repo_id!r} from the hub: {err}") from err
