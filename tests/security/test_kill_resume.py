"""A training process killed with SIGKILL (mid-step or mid-checkpoint) resumes to the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("psaguard.training.stage1")
# Several fresh processes (torch import, model load, training): ~1 min even on an idle 2-core machine.
pytestmark = [pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")]

from psaguard.checkpoints.serialization import load_tensors  # noqa: E402

CHILD = """
import json, sys, torch
torch.set_num_threads(1)
from psaguard.training.config import Stage1Config
from psaguard.training.stage1 import train_stage1
train_stage1(Stage1Config(**json.load(open(sys.argv[1]))), resume=sys.argv[2] == "1")
"""
STEPS = 8


def _dataset(root: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for index in range(16):
        risky = index % 2 == 0
        color = np.array([220, 40, 40] if risky else [40, 40, 220])
        Image.fromarray(np.clip(color + rng.integers(-40, 40, (32, 32, 3)), 0, 255).astype(np.uint8)).save(
            root / f"{index}.png"
        )
        label = {"safe_level": 3, "safe_type": "illegal"} if risky else {"safe_level": 0, "safe_type": "safe"}
        rows.append({"image": f"{index}.png", "prompt": "what is this ?", "response": "a square", **label})
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _config(tiny_dir: Path, data: Path, out: Path) -> Path:
    settings = {
        "model": str(tiny_dir),
        "train_data": str(data),
        "output_dir": str(out),
        "batch_size": 2,
        "grad_accum": 1,
        "max_steps": STEPS,
        "checkpoint_every": 1,  # a checkpoint write is always near: kills land inside one often
        "keep_checkpoints": 2,
        "lr": 1e-3,
        "warmup_steps": 1,
        "log_every": 1,
        "progress_bar": False,
        "plots": False,
        "seed": 0,
        "guard": {"tokens": {"num_tokens": 8}},
    }
    path = out.parent / f"{out.name}.json"
    path.write_text(json.dumps(settings))
    return path


def _start(config: Path, resume: bool) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(config), "1" if resume else "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _kill_when(process: subprocess.Popen, checkpoints: Path, ready, timeout: float = 120.0) -> bool:
    """SIGKILL ``process`` as soon as ``ready(checkpoints)``; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if checkpoints.is_dir() and ready(checkpoints):
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.002)
    process.kill()
    raise AssertionError("training did not reach the kill point in time")


def _newest_step(checkpoints: Path) -> int:
    steps = [int(p.name.removeprefix("step-")) for p in checkpoints.iterdir() if p.name.startswith("step-")]
    return max(steps, default=0)


def _writing_a_checkpoint_after(step: int):
    """A checkpoint is being written (its temporary directory exists) and one of ``step`` or later is complete."""
    return lambda checkpoints: (
        _newest_step(checkpoints) >= step and any(p.name.endswith(".tmp") for p in checkpoints.iterdir())
    )


def _past(step: int):
    return lambda checkpoints: _newest_step(checkpoints) >= step


@pytest.mark.slow  # three training runs in subprocesses, two of them killed: ~30 s
def test_sigkill_mid_checkpoint_and_mid_step_resumes_to_the_uninterrupted_weights(tiny_dir, tmp_path: Path) -> None:
    data = _dataset(tmp_path)
    straight = tmp_path / "straight"
    child = _start(_config(tiny_dir, data, straight), resume=False)
    assert child.wait() == 0, child.stderr.read().decode()[-2000:]

    out = tmp_path / "killed"
    config = _config(tiny_dir, data, out)
    checkpoints = out / "checkpoints"
    kills = 0
    # first kill: while a checkpoint is being written; second: between checkpoints, mid-training
    for ready in (_writing_a_checkpoint_after(2), _past(5)):
        resume = checkpoints.is_dir() and _newest_step(checkpoints) > 0
        if _kill_when(_start(config, resume), checkpoints, ready):
            kills += 1
            for path in checkpoints.iterdir():  # what survived a kill is complete, never torn
                if path.name.startswith("step-"):
                    assert load_tensors(path / "trainable.safetensors")
    final = _start(config, resume=True)
    assert final.wait() == 0, final.stderr.read().decode()[-2000:]
    assert kills == 2

    expected = load_tensors(straight / "psaguard_model.safetensors")
    resumed = load_tensors(out / "psaguard_model.safetensors")
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)
