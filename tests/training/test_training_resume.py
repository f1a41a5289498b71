"""A run killed after a checkpoint and resumed ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from psaguard.errors import CheckpointError
from psaguard.training import loop
from psaguard.training.config import Stage1Config, Stage2Config
from psaguard.training.stage1 import train_stage1
from psaguard.training.stage2 import train_stage2


class Killed(Exception):
    """Stands in for the process dying."""


def kill_after_first_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    real = loop.save_checkpoint

    def save_then_die(*args: Any, **kwargs: Any) -> Path:
        real(*args, **kwargs)
        raise Killed

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)


def history(out: Path) -> list[dict[str, float]]:
    """The logged metrics without the timing, which differs between any two runs."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in record.items() if k != "samples_per_s"} for record in records]


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_kill_and_resume_matches_the_uninterrupted_run(
    stage: str, stage1_settings: dict[str, Any], stage2_settings: dict[str, Any], monkeypatch, tmp_path: Path
) -> None:
    # 32 examples, micro-batch 4, 2 micro-batches a step: 4 steps an epoch; 6 steps cross an epoch boundary.
    common = {"grad_accum": 2, "max_steps": 6, "checkpoint_every": 3, "log_every": 1}
    if stage == "stage1":
        settings, train, weights = {**stage1_settings, **common}, train_stage1, "psaguard_model.safetensors"
        make = Stage1Config
    else:
        # Unquantized and with heavy LoRA dropout, so that the result depends on the restored RNG state.
        settings = {**stage2_settings, **common, "quant": {"load_in_4bit": False}, "lora": {"r": 8, "dropout": 0.5}}
        train, weights, make = train_stage2, "adapter/adapter_model.safetensors", Stage2Config

    straight = make(**{**settings, "output_dir": str(tmp_path / "straight")})
    train(straight)

    interrupted = make(**{**settings, "output_dir": str(tmp_path / "interrupted")})
    with monkeypatch.context() as patch:
        kill_after_first_checkpoint(patch)
        with pytest.raises(Killed):
            train(interrupted)
    assert not (interrupted.output_dir / weights).exists()
    train(interrupted, resume=True)

    expected, resumed = load_file(straight.output_dir / weights), load_file(interrupted.output_dir / weights)
    assert expected.keys() == resumed.keys()
    assert all((expected[k] == resumed[k]).all() for k in expected)
    assert history(interrupted.output_dir) == history(straight.output_dir)


def test_resume_without_a_checkpoint_is_a_checkpoint_error(stage1_settings: dict[str, Any]) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train_stage1(Stage1Config(**stage1_settings), resume=True)
