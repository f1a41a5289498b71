"""Request-only rows (no response, as converted from benchmarks): Stage I trains the head on them with the LM
loss off; a stage whose LM loss needs answers refuses them naming file and line, or skips them if asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from psaguard.errors import DatasetError
from psaguard.training.config import Stage1Config
from psaguard.training.stage1 import train_stage1


def _request_only(train: Path, out: Path, keep_answers: int) -> Path:
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    for row in rows[keep_answers:]:
        del row["response"]
        row["source_label"] = "from a benchmark"
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return out


def test_stage1_with_the_lm_loss_refuses_a_request_only_row_naming_its_line(
    stage1_settings: dict[str, Any], toy_data: dict[str, Path]
) -> None:
    data = _request_only(toy_data["train"], toy_data["train"].with_name("request_only_a.jsonl"), keep_answers=2)
    with pytest.raises(DatasetError, match="request-only row") as caught:
        train_stage1(Stage1Config.model_validate({**stage1_settings, "train_data": str(data), "max_steps": 1}))
    assert (caught.value.path, caught.value.line) == (str(data), 3)


def test_stage1_trains_the_head_on_request_only_rows_with_the_lm_loss_off(
    stage1_settings: dict[str, Any], toy_data: dict[str, Path]
) -> None:
    data = _request_only(toy_data["train"], toy_data["train"].with_name("request_only_b.jsonl"), keep_answers=0)
    settings = {**stage1_settings, "train_data": str(data), "max_steps": 1, "lm_loss_weight": 0.0}
    out = train_stage1(Stage1Config.model_validate(settings))
    report = json.loads((out / "data_report.json").read_text())
    assert (report["train"]["kept"], report["train"]["skipped"]) == (32, 0)


def test_skip_invalid_rows_skips_request_only_rows_when_answers_are_needed(
    stage1_settings: dict[str, Any], toy_data: dict[str, Path]
) -> None:
    data = _request_only(toy_data["train"], toy_data["train"].with_name("request_only_c.jsonl"), keep_answers=8)
    settings = {**stage1_settings, "train_data": str(data), "max_steps": 1, "skip_invalid_rows": True}
    out = train_stage1(Stage1Config.model_validate(settings))
    report = json.loads((out / "data_report.json").read_text())["train"]
    assert (report["kept"], report["skipped"]) == (8, 24)
    assert "request-only row" in report["errors"][0]
