"""Response labels: the JSONL schema, Stage I training the response head beside the request heads, eval metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from toy_rows import write_dataset

from psaguard import ConfigError, SafetyGuard
from psaguard.errors import DatasetError
from psaguard.taxonomy import DEFAULT_TAXONOMY
from psaguard.training.config import Stage1Config
from psaguard.training.data import read_jsonl
from psaguard.training.evaluate import evaluate_guard
from psaguard.training.loop import run_training
from psaguard.training.runtime import make_accelerator
from psaguard.training.stage1 import build_stage1

# Words of the tiny vocabulary, so the answers differ token by token.
ANSWERS = (
    ({"response": "yes , make it with the red text and show me", "response_level": 3, "response_type": "illegal"}),
    ({"response": "this is a blue square", "response_harmful": False}),
    ({"response": "sorry i can't help with that request", "response_harmful": False}),
)


def one_row(tmp_path: Path, **fields: Any) -> Path:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    row = {"image": "a.png", "prompt": "describe this image", "safe_level": 0, "safe_type": "safe", **fields}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    return path


def test_response_labels_in_the_row_schema(tmp_path: Path) -> None:
    (harmful,), _ = read_jsonl(one_row(tmp_path, response="x", response_level=2, response_type="privacy"))
    assert harmful.has_response_labels and harmful.response_level == 2 and harmful.response == "x"
    (harmless,), _ = read_jsonl(one_row(tmp_path, response="x", response_harmful=False))
    assert harmless.response_level == 0 and harmless.response_type == DEFAULT_TAXONOMY.safe_type_id
    (unlabelled,), _ = read_jsonl(one_row(tmp_path, response="x"))
    assert not unlabelled.has_response_labels


@pytest.mark.parametrize(
    "fields",
    [
        {"response_harmful": True, "response": "x"},  # level and type missing
        {"response_harmful": False},  # no answer to label
        {"response": "x", "response_harmful": False, "response_level": 2, "response_type": "privacy"},
        {"response": "x", "response_level": 2, "response_type": "safe"},
        {"response": "x", "response_level": 0, "response_type": "privacy"},
        {"response": "x", "response_level": 9, "response_type": "privacy"},
        {"response": "x", "response_harmful": "yes"},
    ],
)
def test_bad_response_labels_name_the_line(tmp_path: Path, fields: dict[str, Any]) -> None:
    with pytest.raises(DatasetError, match=r"rows\.jsonl"):
        read_jsonl(one_row(tmp_path, **fields))


@pytest.fixture(scope="module")
def answer_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("answers")
    return {
        "train": write_dataset(root, "train", 36, seed=0, answers=ANSWERS),
        "test": write_dataset(root, "test", 12, seed=1, answers=ANSWERS),
    }


def test_response_labels_need_a_response_head(stage1_settings: dict[str, Any], answer_data) -> None:
    cfg = Stage1Config(**{**stage1_settings, "train_data": str(answer_data["train"]), "max_steps": 1})
    with pytest.raises(ConfigError, match="response_head"):
        build_stage1(cfg, make_accelerator(cfg))


def test_stage1_trains_the_response_head_and_eval_reports_it(stage1_settings: dict[str, Any], answer_data) -> None:
    settings = {
        **stage1_settings,
        "train_data": str(answer_data["train"]),
        "eval_data": str(answer_data["test"]),  # keep-best and calibration, the response head's included
        "epochs": 8,
        "lr": 1e-2,
        "guard": {"tokens": {"num_tokens": 8}, "head": {"response_head": True}},
    }
    cfg = Stage1Config(**settings)
    accelerator = make_accelerator(cfg)
    setup = build_stage1(cfg, accelerator)
    head_before = {n: t.clone() for n, t in setup.guard.modules.response_head.state_dict().items()}
    run_training(setup.task, cfg, accelerator)
    changed = [
        n for n, t in setup.guard.modules.response_head.state_dict().items() if not torch.equal(t, head_before[n])
    ]
    assert changed
    guard = SafetyGuard.from_pretrained(cfg.output_dir, setup.guard.model, setup.guard.processor)
    examples, _ = read_jsonl(answer_data["test"])
    report = evaluate_guard(guard, examples)
    assert report.response is not None and report.response.examples == len(examples)
    # Held-out answers: a third harmful; chance F1 (flag at random) is about 0.4.
    assert report.response.detection.f1 >= 0.9, report.response
    assert 0.0 <= report.response.ece <= 1.0
    assert "response_f1" in report.headline()
    head = guard.config.head
    assert head.response_level_temperature != 1.0 and head.response_type_temperature != 1.0
