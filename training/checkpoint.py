"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG states and the data position.

A checkpoint is a directory ``step-00000040`` under ``<output_dir>/checkpoints``. It is filled under a
temporary name and renamed into place, so a crash leaves either a complete checkpoint or none; the
newest complete one is what ``--resume`` loads.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors.torch import safe_open

from psaguard.checkpoints.files import loads_strict_json, open_regular_file, read_json_file
from psaguard.checkpoints.serialization import atomic_write, atomic_write_text, load_tensors, save_tensors
from psaguard.errors import CheckpointError
from psaguard.training.keep_best import BestStep

__all__ = [
    "DataPosition",
    "TrainState",
    "latest_checkpoint",
    "load_best_weights",
    "load_checkpoint",
    "prune_checkpoints",
    "read_state",
    "restore_rng",
    "rng_tensors",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

_PREFIX = "step-"
_STATE = "state.json"
_WEIGHTS = "trainable.safetensors"
_OPTIMIZER = "optimizer.pt"
_BEST = "best.safetensors"
_MAX_STATE_BYTES = 64 * 1024 * 1024  # one history line per logged step: a few MB after millions of steps
_MAX_STEPS = 1 << 40  # far beyond any run; keeps hostile counts out of the arithmetic
# AdamW keeps two moments per parameter: the file holds about twice the trainable bytes plus pickle framing.
_OPTIMIZER_BYTES_PER_PARAM_BYTE = 3
_OPTIMIZER_SLACK_BYTES = 16 * 1024 * 1024
# What torch.load(weights_only=True) and load_state_dict raise on a hostile or mismatched file.
_OPTIMIZER_ERRORS = (
    OSError,
    RuntimeError,
    KeyError,
    ValueError,
    TypeError,
    IndexError,
    AttributeError,
    EOFError,
    pickle.UnpicklingError,
)


class DataPosition(BaseModel):
    """What the data order depends on; a resumed run must see the same, or it cannot continue exactly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_examples: int = Field(ge=1, description="Training examples after balancing.")
    batch_size: int = Field(ge=1, description="Per-device micro-batch size.")
    grad_accum: int = Field(ge=1, description="Micro-batches per optimizer step.")
    world_size: int = Field(ge=1, description="Number of processes.")
    seed: int = Field(description="Shuffling seed.")


class TrainState(BaseModel):
    """Progress of a run: optimizer steps done, where in the data, and the metrics so far."""

    model_config = ConfigDict(extra="forbid")

    step: int = Field(0, ge=0, le=_MAX_STEPS, description="Optimizer steps done (at most total_steps).")
    total_steps: int = Field(ge=1, le=_MAX_STEPS, description="Optimizer steps the run makes in all.")
    steps_per_epoch: int = Field(ge=1, le=_MAX_STEPS, description="Optimizer steps per pass over the data.")
    data: DataPosition = Field(description="What the data order depends on.")
    history: list[dict[str, int | float]] = Field(default_factory=list, description="Logged metrics, one dict a line.")
    best: BestStep | None = Field(None, description="The best evaluation so far (keep-best), if any.")
    stop_reason: str | None = Field(None, description="Why the run stopped before total_steps, if it did.")

    @model_validator(mode="after")
    def _step_within_the_run(self) -> TrainState:
        if self.step > self.total_steps:
            raise ValueError(f"step {self.step} is past the run's {self.total_steps} steps")
        return self

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    @property
    def step_in_epoch(self) -> int:
        return self.step % self.steps_per_epoch


def save_checkpoint(
    root: Path,
    state: TrainState,
    trainable: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    rank: int = 0,
    barrier: Callable[[], None] = lambda: None,
    best_weights: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write a complete checkpoint of ``state.step`` under ``root`` and return its directory.

    Every process calls this: each saves its own RNG states, process 0 everything else (the weights and
    optimizer states are the same on all processes). ``barrier`` synchronises the processes.
    ``best_weights`` (the keep-best snapshot) is saved beside the current weights.
    """
    final = root / f"{_PREFIX}{state.step:08d}"
    staging = root / f".{final.name}.tmp"
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier()
    tensors, meta = rng_tensors()
    save_tensors(staging / _rng_name(rank), tensors, metadata=meta)
    barrier()
    if rank == 0:
        save_tensors(staging / _WEIGHTS, trainable)
        if best_weights is not None:
            save_tensors(staging / _BEST, best_weights)
        payload = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        atomic_write(staging / _OPTIMIZER, lambda tmp: torch.save(payload, tmp))
        atomic_write_text(staging / _STATE, state.model_dump_json(indent=2) + "\n")
        _remove(final)
        os.replace(staging, final)
    barrier()
    return final


def load_checkpoint(
    path: Path,
    trainable: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    rank: int = 0,
) -> TrainState:
    """Restore weights (in place), optimizer, scheduler and RNG from ``path``; return the saved state."""
    state = read_state(path)
    expected = {name: (t.shape, t.dtype) for name, t in trainable.items()}
    tensors = load_tensors(path / _WEIGHTS, expected)
    with torch.no_grad():
        for name, tensor in trainable.items():
            tensor.copy_(tensors[name])
    param_bytes = sum(t.numel() * t.element_size() for t in trainable.values())
    max_bytes = _OPTIMIZER_BYTES_PER_PARAM_BYTE * param_bytes + _OPTIMIZER_SLACK_BYTES
    try:
        with open_regular_file(path / _OPTIMIZER, max_bytes, CheckpointError, "optimizer state") as handle:
            payload = torch.load(handle, map_location="cpu", weights_only=True)  # tensors and containers only
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
    except _OPTIMIZER_ERRORS as err:
        raise CheckpointError(
            f"cannot restore optimizer state from {path / _OPTIMIZER}: {type(err).__name__}: {err}"
        ) from err
    restore_rng(path / _rng_name(rank))
    return state


def read_state(path: Path) -> TrainState:
    """The :class:`TrainState` of checkpoint ``path``: a bounded, strict JSON read, validated (step within the run)."""
    raw = read_json_file(path / _STATE, _MAX_STATE_BYTES, CheckpointError, "checkpoint state")
    try:
        return TrainState.model_validate(raw)
    except ValidationError as err:
        raise CheckpointError(f"invalid checkpoint state {path / _STATE}: {err}") from err


def load_best_weights(path: Path, trainable: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The keep-best snapshot saved in checkpoint ``path`` (checked against ``trainable``), or None."""
    if not (path / _BEST).is_file():
        return None
    return load_tensors(path / _BEST, {name: (t.shape, t.dtype) for name, t in trainable.items()})


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / _STATE).is_file()]
    return max(done, key=lambda p: p.name, default=None)


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints."""
    done = sorted(p for p in root.iterdir() if p.name.startswith(_PREFIX))
    for old in done[:-keep]:
        _remove(old)


def _remove(directory: Path) -> None:
    """Delete a checkpoint so that a crash midway never leaves a torn ``step-*`` directory behind.

    ``rmtree`` deletes file by file; killed in between, it left ``state.json`` without the weights, which
    looks complete. Renaming first is atomic: the checkpoint is either whole or gone from the listing.
    """
    if not directory.exists():
        return
    trash = directory.with_name(f".{directory.name}.deleting")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(directory, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _rng_name(rank: int) -> str:
    return f"rng-{rank}.safetensors"


def rng_tensors() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The states of torch (CPU and CUDA), numpy and Python's ``random`` as tensors plus string metadata."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    tensors = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "python": torch.tensor(internal, dtype=torch.int64),
    }
    if torch.cuda.is_available():
        tensors["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    meta = {"numpy": json.dumps([kind, pos, has_gauss, gauss]), "python": json.dumps([version, gauss_next])}
    return tensors, meta


def restore_rng(path: Path) -> None:
    """Set every RNG back to the states saved by :func:`rng_tensors` in ``path``."""
    tensors = load_tensors(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta: dict[str, Any] = handle.metadata() or {}
        kind, pos, has_gauss, gauss = loads_strict_json(meta["numpy"])
        version, gauss_next = loads_strict_json(meta["python"])
        torch.set_rng_state(tensors["torch"])
        np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate((version, tuple(tensors["python"].tolist()), gauss_next))
        if "cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(list(tensors["cuda"]))
    # The states' own setters check them: ValueError/TypeError for a malformed state, RuntimeError from torch.
    except (KeyError, IndexError, ValueError, TypeError, RuntimeError, RecursionError, OSError) as err:
        raise CheckpointError(f"cannot restore the RNG states in {path}: {type(err).__name__}: {err}") from err
