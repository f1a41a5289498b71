"""Hostile resumable checkpoints: every tampered part is a CheckpointError within a second, never code or a hang."""

from __future__ import annotations

import io
import json
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fifo_helpers import error_without_blocking

from psaguard.checkpoints.serialization import save_tensors
from psaguard.errors import CheckpointError
from psaguard.training.checkpoint import DataPosition, TrainState, load_checkpoint, rng_tensors, save_checkpoint

CALLS: list[str] = []


def _record_call() -> int:
    CALLS.append("unpickled")
    return 0


class Payload:
    """Stands in for a hostile pickle: a plain unpickler would call ``_record_call`` (any callable could be named)."""

    def __reduce__(self):
        return (_record_call, ())


def _parts() -> tuple[dict[str, torch.Tensor], torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    weight = torch.nn.Parameter(torch.ones(3, 2))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return {"weight": weight}, optimizer, scheduler


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    trainable, optimizer, scheduler = _parts()
    trainable["weight"].sum().backward()
    optimizer.step()
    data = DataPosition(num_examples=8, batch_size=2, grad_accum=1, world_size=1, seed=0)
    state = TrainState(step=4, total_steps=8, steps_per_epoch=4, data=data)
    return save_checkpoint(tmp_path / "checkpoints", state, trainable, optimizer, scheduler)


def _load(path: Path) -> TrainState:
    return load_checkpoint(path, *_parts())


def _edit_state(path: Path, **changes: object) -> None:
    state = json.loads((path / "state.json").read_text())
    state.update(changes)
    (path / "state.json").write_text(json.dumps(state))


def _refused_within_a_second(path: Path, match: str) -> None:
    start = time.process_time()
    with pytest.raises(CheckpointError, match=match):
        _load(path)
    assert time.process_time() - start < 1.0


def test_an_untouched_checkpoint_loads(checkpoint: Path) -> None:
    state = _load(checkpoint)
    assert (state.step, state.epoch, state.step_in_epoch) == (4, 1, 0)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"steps_per_epoch": 0}, "steps_per_epoch"),  # was a ZeroDivisionError
        ({"step": 10**9}, "past the run"),  # was accepted: "training ended" with nothing trained
        ({"step": -5}, "step"),
        ({"total_steps": 0}, "total_steps"),
        ({"data": {"num_examples": 0, "batch_size": 0, "grad_accum": 1, "world_size": 1, "seed": 0}}, "batch_size"),
    ],
    ids=["zero-steps-per-epoch", "step-1e9", "negative-step", "zero-total", "zero-batch"],
)
def test_out_of_range_state_is_a_checkpoint_error(checkpoint: Path, changes: dict, match: str) -> None:
    _edit_state(checkpoint, **changes)
    _refused_within_a_second(checkpoint, match)


@pytest.mark.parametrize(
    "text",
    ["not json", '{"step": ' + "9" * 5000 + "}", "[" * 100_000 + "]" * 100_000, '{"step": 1, "step": 2}'],
    ids=["not-json", "5000-digit-int", "100k-deep", "duplicate-key"],
)
def test_unparsable_state_is_a_checkpoint_error(checkpoint: Path, text: str) -> None:
    (checkpoint / "state.json").write_text(text)
    _refused_within_a_second(checkpoint, "checkpoint state")


@pytest.mark.parametrize("protocol", [2])  # torch.save's protocol
def test_a_pickle_in_the_optimizer_file_is_refused_unrun(checkpoint: Path, protocol: int) -> None:
    hostile = pickle.dumps({"optimizer": Payload(), "scheduler": {}}, protocol=protocol)
    pickle.loads(hostile)
    assert CALLS == ["unpickled"]  # what a plain unpickler does with it
    CALLS.clear()
    (checkpoint / "optimizer.pt").write_bytes(hostile)
    _refused_within_a_second(checkpoint, "optimizer state")
    assert CALLS == []


def _saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x80\x02K\x01.",
        _saved([1, 2]),
        _saved({"optimizer": {"state": 3}, "scheduler": {}}),
        _saved({"optimizer": {"state": {}, "param_groups": [{"params": [5]}]}, "scheduler": {}}),
    ],
    ids=["empty", "a-pickled-int", "a-list", "bad-state", "unknown-parameter"],
)
def test_a_malformed_optimizer_file_is_a_checkpoint_error(checkpoint: Path, payload: bytes) -> None:
    (checkpoint / "optimizer.pt").write_bytes(payload)
    _refused_within_a_second(checkpoint, "optimizer state")


def test_an_oversized_optimizer_file_is_refused_before_reading(checkpoint: Path) -> None:
    with open(checkpoint / "optimizer.pt", "wb") as handle:
        handle.truncate(64 * 1024 * 1024)  # sparse: far more than 2 moments of 6 parameters
    _refused_within_a_second(checkpoint, "exceeds the limit")


@pytest.mark.parametrize("name", ["optimizer.pt", "state.json"])
def test_a_fifo_in_the_checkpoint_is_refused_without_blocking(checkpoint: Path, name: str) -> None:
    (checkpoint / name).unlink()
    os.mkfifo(checkpoint / name)
    err = error_without_blocking(lambda: _load(checkpoint), checkpoint / name, CheckpointError)
    assert "not a regular file" in str(err)


def _rewrite_rng(path: Path, edit: Callable[[dict[str, torch.Tensor], dict[str, str]], None]) -> None:
    tensors, meta = rng_tensors()
    edit(tensors, meta)
    save_tensors(path / "rng-0.safetensors", tensors, metadata=meta)  # a valid checksum over the edited tensors


@pytest.mark.parametrize(
    "edit",
    [
        lambda tensors, meta: meta.update(numpy="not json"),  # was a JSONDecodeError
        lambda tensors, meta: meta.update(python='"a string"'),
        lambda tensors, meta: meta.update(numpy='["MT19937", ' + "9" * 5000 + ", 0, 0.0]"),
        lambda tensors, meta: meta.pop("python"),
        lambda tensors, meta: tensors.update(torch=torch.zeros(3)),
        lambda tensors, meta: tensors.update(numpy=torch.zeros(3, dtype=torch.int64)),
    ],
    ids=["numpy-not-json", "python-not-a-pair", "long-int", "missing-python", "torch-state-shape", "numpy-keys"],
)
def test_a_malformed_rng_state_is_a_checkpoint_error(checkpoint: Path, edit) -> None:
    _rewrite_rng(checkpoint, edit)
    _refused_within_a_second(checkpoint, "RNG")
