"""Fixtures for the trainer: a tiny labelled dataset on disk (two visually distinct classes) and configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from toy_rows import write_dataset


@pytest.fixture(autouse=True)
def _one_thread():
    """Train single-threaded: on a busy 2-core machine, intra-op threads make tiny-model steps ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """train.jsonl (32 rows) and test.jsonl (8 rows) with their images in one directory."""
    root = tmp_path_factory.mktemp("toy_data")
    return {"train": write_dataset(root, "train", 32, seed=0), "test": write_dataset(root, "test", 8, seed=1)}


@pytest.fixture
def stage1_settings(tiny_dir: Path, toy_data: dict[str, Path], tmp_path: Path) -> dict[str, Any]:
    """A small, fast Stage I config (as a dict, to be overridden per test)."""
    return {
        "model": str(tiny_dir),
        "train_data": str(toy_data["train"]),
        "output_dir": str(tmp_path / "stage1"),
        "batch_size": 4,
        "grad_accum": 1,
        "lr": 1e-3,
        "warmup_steps": 2,
        "epochs": 1,
        "log_every": 1,
        "checkpoint_every": 1000,
        "progress_bar": False,
        "plots": False,
        "seed": 0,
        "guard": {"tokens": {"num_tokens": 8}},
    }


@pytest.fixture(scope="session")
def stage1_guard_dir(tiny_model, tiny_processor, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An (untrained) Stage I guard for the tiny model, as Stage II starts from."""
    from psaguard import SafetyGuard, SafetyGuardConfig

    torch.manual_seed(0)
    config = SafetyGuardConfig.model_validate({"tokens": {"num_tokens": 8}})
    return SafetyGuard.attach(tiny_model, tiny_processor, config).save_pretrained(tmp_path_factory.mktemp("guard"))


@pytest.fixture
def stage2_settings(stage1_settings: dict[str, Any], stage1_guard_dir: Path, tmp_path: Path) -> dict[str, Any]:
    """A small, fast Stage II config: QLoRA r=8 on the tiny model."""
    settings = {k: v for k, v in stage1_settings.items() if k != "guard"}
    return {**settings, "guard": str(stage1_guard_dir), "output_dir": str(tmp_path / "stage2"), "lora": {"r": 8}}
