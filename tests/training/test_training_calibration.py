"""Temperature scaling: the fit recovers a known temperature, and calibrating an overconfident guard lowers its
ECE on held-out rows; ``psaguard calibrate`` writes the temperatures and ``psaguard eval`` reports both ECEs
and a threshold sweep that moves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pattern_data import write_patterns

from psaguard.config import SafetyGuardConfig
from psaguard.training.calibration import fit_temperature, nll, reliability, softmax
from psaguard.training.config import Stage1Config, load_config
from psaguard.training.stage1 import train_stage1

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "guard" / "assets" / "world_demo" / "model"


def test_the_fit_recovers_the_temperature_the_labels_were_drawn_with() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (4000, 5))
    probs = softmax(logits, 3.0)
    labels = [int(rng.choice(5, p=row)) for row in probs]
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(3.0, rel=0.1)
    assert nll(logits, labels, fitted) < nll(logits, labels, 1.0)
    assert reliability(softmax(logits, fitted), labels)[1] < 0.5 * reliability(softmax(logits), labels)[1]


@pytest.fixture(scope="module")
def overfit_guard(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """A guard trained far past its best step (no keep-best, no calibration): overconfident on new rows."""
    root = tmp_path_factory.mktemp("overfit")
    data = {
        name: write_patterns(root, name, n, seed)
        for seed, (name, n) in enumerate((("train", 112), ("val", 140), ("test", 140)))
    }
    overrides = [
        f"model={BASE}",
        f"train_data={data['train']}",
        f"output_dir={root / 'stage1'}",
        "lr=1e-2",
        "max_steps=100",
        "calibrate=false",
        "progress_bar=false",
        "plots=false",
    ]
    cfg = load_config(Stage1Config, REPO / "examples" / "configs" / "stage1_small.yaml", overrides)
    return train_stage1(cfg), data


def test_calibrate_then_eval_lowers_the_ece_on_held_out_rows(overfit_guard, capsys) -> None:
    from psaguard.cli.main import main

    guard_dir, data = overfit_guard
    missing = str(guard_dir / "missing.jsonl")
    assert main(["calibrate", "--guard", str(guard_dir), "--data", missing, "--cpu"]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "missing.jsonl" in err
    assert SafetyGuardConfig.load(guard_dir).head.level_temperature == 1.0  # nothing written on error
    assert main(["calibrate", "--guard", str(guard_dir), "--data", str(data["val"]), "--cpu"]) == 0
    fit = json.loads(capsys.readouterr().out)
    head = SafetyGuardConfig.load(guard_dir).head
    assert fit["level"]["temperature"] > 1 and fit["type"]["temperature"] > 1  # overconfident heads get softened
    assert head.level_temperature == fit["level"]["temperature"] and head.type_temperature == fit["type"]["temperature"]

    out = guard_dir / "eval-test"
    assert main(["eval", "--guard", str(guard_dir), "--data", str(data["test"]), "--cpu", "--out", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    for name in ("level", "type"):
        assert report[name]["ece"] < report[name]["ece_uncalibrated"], (name, report[name]["ece"])
        assert report[name]["temperature"] == fit[name]["temperature"]
    sweep = report["threshold_sweep"]
    assert [p["threshold"] for p in sweep] == sorted(p["threshold"] for p in sweep)
    for key in ("flagged_unsafe", "flagged_safe"):
        values = [p[key] for p in sweep]
        assert values == sorted(values, reverse=True)  # a higher threshold never flags more
    assert (
        sweep[0]["flagged_safe"] > sweep[-1]["flagged_safe"]
        and sweep[0]["flagged_unsafe"] > sweep[-1]["flagged_unsafe"]
    )
    assert {"reliability_level.png", "threshold_sweep.png"} <= {p.name for p in out.iterdir()}
