"""The small-data recipes (examples/configs/stage*_small.yaml) learn, untuned, on data they never saw.

The data are texture patterns (tests/training/pattern_data.py) in a style the synthetic world never draws, with
prompts and answers outside the base model's vocabulary; the base is the shipped world_demo model. The
recipe files are used as a user would: only model, data and output paths are set (plus a step cap in the
fast variants).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from pattern_data import write_patterns

from psaguard import SafetyGuard
from psaguard.training.config import QuantConfig, Stage1Config, Stage2Config, load_config
from psaguard.training.data import read_jsonl
from psaguard.training.evaluate import evaluate_guard
from psaguard.training.metrics import macro_f1
from psaguard.training.runtime import load_model_from
from psaguard.training.stage1 import train_stage1
from psaguard.training.stage2 import train_stage2

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "guard" / "assets" / "world_demo" / "model"
CONFIGS = REPO / "examples" / "configs"


def _data(root: Path, sizes: tuple[int, int, int]) -> dict[str, Path]:
    return {
        name: write_patterns(root, name, n, seed) for seed, (name, n) in enumerate(zip(("train", "val", "test"), sizes))
    }


def _recipe(stage: str, cls, data: dict[str, Path], out: Path, *extra: str):
    paths = [f"model={BASE}", f"train_data={data['train']}", f"eval_data={data['val']}", f"output_dir={out}"]
    return load_config(cls, CONFIGS / f"{stage}_small.yaml", [*paths, "progress_bar=false", "plots=false", *extra])


def _scores(guard_dir: Path, test: Path) -> tuple[float, float, float, float]:
    """(level macro-F1, type macro-F1) of the guard on ``test``, and the same of always predicting the majority."""
    model, processor = load_model_from(str(BASE), None, QuantConfig(), "float32", torch.device("cpu"))
    guard = SafetyGuard.from_pretrained(guard_dir, model, processor, load_adapter=False)
    examples, _ = read_jsonl(test)
    report = evaluate_guard(guard, examples)
    majority = []
    for labels in ([e.level for e in examples], [e.type for e in examples]):
        top = Counter(labels).most_common(1)[0][0]
        majority.append(macro_f1(labels, [top] * len(labels)))
    return report.level.macro_f1, report.type.macro_f1, majority[0], majority[1]


@pytest.fixture(scope="module")
def patterns(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _data(tmp_path_factory.mktemp("patterns"), (224, 70, 140))


@pytest.fixture(scope="module")
def stage1_dir(patterns: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = _recipe("stage1", Stage1Config, patterns, tmp_path_factory.mktemp("recipe") / "stage1", "max_steps=100")
    return train_stage1(cfg)


def test_stage1_small_recipe_beats_the_majority_baseline_on_unseen_patterns(
    stage1_dir: Path, patterns: dict[str, Path]
) -> None:
    level_f1, type_f1, level_majority, type_majority = _scores(stage1_dir, patterns["test"])
    assert type_majority < 0.1 and level_majority < 0.2  # 7 types, 4 levels: one predicted class scores little
    assert type_f1 > 0.4 and type_f1 > 4 * type_majority, (type_f1, type_majority)
    assert level_f1 > 0.5 and level_f1 > 2.5 * level_majority, (level_f1, level_majority)
    summary = json.loads((stage1_dir / "run_summary.json").read_text())
    assert summary["best"]["metric"] == "head_loss" and summary["saved_step"] == summary["best"]["step"]


def test_stage2_small_recipe_lowers_the_eval_lm_loss(
    stage1_dir: Path, patterns: dict[str, Path], tmp_path: Path
) -> None:
    cfg = _recipe("stage2", Stage2Config, patterns, tmp_path / "stage2", f"guard={stage1_dir}", "max_steps=40")
    out = train_stage2(cfg)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval_lm_loss"] for r in records if "eval_lm_loss" in r]
    assert len(evals) == 2  # eval_every 20 of 40 steps
    train = [r["lm_loss"] for r in records if "lm_loss" in r and "eval_lm_loss" not in r]
    assert min(evals) < 0.5 * train[0], (train[0], evals)
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert "lm_head" in json.loads((out / "adapter" / "adapter_config.json").read_text())["target_modules"]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["best"]["metric"] == "lm_loss" and summary["best"]["value"] == min(evals)


@pytest.mark.slow
def test_stage1_small_recipe_on_1000_rows_learns_the_patterns(tmp_path: Path) -> None:
    data = _data(tmp_path, (1000, 300, 400))
    out = train_stage1(_recipe("stage1", Stage1Config, data, tmp_path / "stage1"))
    level_f1, type_f1, _, type_majority = _scores(out, data["test"])
    assert type_f1 > 0.75 and level_f1 > 0.8, (level_f1, type_f1, type_majority)
