"""Keep-best and early stopping: the saved result is the best evaluated step, and the run says why it ended."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from psaguard.checkpoints.serialization import load_tensors
from psaguard.errors import ConfigError
from psaguard.training.config import EarlyStopping, Stage1Config, Stage2Config, load_config
from psaguard.training.keep_best import KeepBest
from psaguard.training.stage1 import train_stage1


def test_keep_best_snapshots_the_best_step_and_stops_after_patience() -> None:
    weight = torch.zeros(3)
    keep = KeepBest(EarlyStopping(patience=2), "head_loss", {"w": weight})
    for step, loss in enumerate([3.0, 2.0, 2.5, 2.4], start=1):
        weight.fill_(step)
        keep.update({"eval_head_loss": loss}, step)
    assert keep.best.step == 2 and keep.best.value == 2.0 and keep.should_stop
    assert "did not improve for 2 evaluations" in keep.stop_reason()
    keep.restore()
    assert torch.equal(weight, torch.full((3,), 2.0))


def test_macro_f1_counts_higher_as_better_and_min_delta_ignores_tiny_gains() -> None:
    keep = KeepBest(EarlyStopping(patience=None, min_delta=0.01), "macro_f1", {"w": torch.zeros(1)})
    for step, score in enumerate([0.5, 0.7, 0.705, 0.6], start=1):
        keep.update({"eval_macro_f1": score}, step)
    assert keep.best.step == 2 and not keep.should_stop  # patience None: keep the best, never stop


@pytest.mark.parametrize(("ties", "kept"), [("earliest", 2), ("latest", 4)])
def test_ties_keep_the_earliest_or_the_latest_equal_step_and_count_towards_patience(ties: str, kept: int) -> None:
    weight = torch.zeros(1)
    keep = KeepBest(EarlyStopping(patience=3, ties=ties), "macro_f1", {"w": weight})
    for step, score in enumerate([0.5, 1.0, 0.9, 1.0, 0.95], start=1):
        weight.fill_(step)
        keep.update({"eval_macro_f1": score}, step)
    assert (keep.best.step, keep.best.value, keep.best.evals_since) == (kept, 1.0, 3)
    assert keep.should_stop  # three evaluations since step 2 without improving on it, ties included
    keep.restore()
    assert weight.item() == kept


def test_stage_metrics_default_by_stage_and_stage2_refuses_head_metrics(tmp_path: Path) -> None:
    common = ["model=m", f"train_data={tmp_path}/t.jsonl", f"output_dir={tmp_path}"]
    assert load_config(Stage1Config, None, common).stop_metric == "head_loss"
    lm_only = load_config(Stage1Config, None, [*common, "head_loss_weight=0"])
    assert lm_only.stop_metric == "lm_loss"
    stage2 = [*common, "guard=g"]
    assert load_config(Stage2Config, None, stage2).stop_metric == "lm_loss"
    with pytest.raises(ConfigError, match="Stage II does not train the head"):
        load_config(Stage2Config, None, [*stage2, "early_stopping.metric=macro_f1"])


def test_stage1_saves_the_best_eval_step_and_stops_early(
    stage1_settings: dict[str, Any], toy_data: dict[str, Path], tmp_path: Path
) -> None:
    # Evaluation data with the labels swapped: the better the head learns the training data, the worse it does
    # here, so the best evaluation is the first one and the run must stop after `patience` more.
    rows = [json.loads(line) for line in toy_data["train"].read_text().splitlines()]
    swapped = [
        {**r, **{k: rows[i ^ 1][k] for k in ("safe_level", "safe_type", "response")}} for i, r in enumerate(rows)
    ]
    eval_data = toy_data["train"].parent / "swapped.jsonl"
    eval_data.write_text("".join(json.dumps(r) + "\n" for r in swapped))
    cfg = Stage1Config(
        **{
            **stage1_settings,
            "eval_data": str(eval_data),
            "lr": 1e-2,
            "epochs": 3,
            "lm_loss_weight": 0,
            "eval_every": 2,
            "checkpoint_every": 2,
            "keep_checkpoints": 20,
            "calibrate": False,
            "early_stopping": {"patience": 3},
        }
    )
    out = train_stage1(cfg)
    summary = json.loads((out / "run_summary.json").read_text())
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "eval_head_loss" in r]
    best = min(evals, key=lambda r: r["eval_head_loss"])
    assert summary["stopped_early"] and summary["steps"] < summary["total_steps"] == 24
    assert summary["saved_step"] == best["step"] == summary["best"]["step"]
    assert len(evals) == summary["steps"] // 2 and evals[-1]["step"] == best["step"] + 6  # 3 more evaluations
    assert "did not improve for 3 evaluations" in summary["stop_reason"]
    saved = load_tensors(out / "psaguard_model.safetensors")
    at_best = load_tensors(out / "checkpoints" / f"step-{best['step']:08d}" / "trainable.safetensors")
    at_last = load_tensors(out / "checkpoints" / f"step-{summary['steps'] - 2:08d}" / "trainable.safetensors")
    assert at_best and all(torch.equal(saved[name.removeprefix("safety.")], t) for name, t in at_best.items())
    assert any(not torch.equal(saved[name.removeprefix("safety.")], t) for name, t in at_last.items())
