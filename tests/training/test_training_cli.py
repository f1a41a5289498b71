"""``psaguard train stage1|stage2`` and ``psaguard eval`` end to end on the tiny model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from psaguard.training.cli import register


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="psaguard")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def write_yaml(path: Path, settings: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def test_both_stages_and_eval_run_from_the_command_line(
    stage1_settings: dict[str, Any], toy_data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    stage1 = {**stage1_settings, "eval_data": str(toy_data["test"]), "plots": True}
    assert (
        run("train", "stage1", "--config", str(write_yaml(tmp_path / "s1.yaml", stage1)), "--set", "max_steps=4") == 0
    )
    out1 = Path(stage1["output_dir"])
    for name in ("psaguard_config.json", "psaguard_model.safetensors", "training_config.json", "metrics.jsonl"):
        assert (out1 / name).is_file(), name
    assert (out1 / "plots" / "curves.png").stat().st_size > 0
    assert (out1 / "eval" / "confusion_type.png").is_file() and (out1 / "eval" / "eval.json").is_file()
    assert json.loads((out1 / "data_report.json").read_text())["train"]["kept"] == 32

    stage2 = {k: v for k, v in stage1.items() if k != "guard"} | {"output_dir": str(tmp_path / "s2"), "lora": {"r": 8}}
    config2 = write_yaml(tmp_path / "s2.yaml", {**stage2, "plots": False})
    assert run("train", "stage2", "--config", str(config2), "--set", f"guard={out1}", "--set", "max_steps=2") == 0
    out2 = Path(stage2["output_dir"])
    assert (out2 / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out2 / "training_config.json").read_text())["quant"]["load_in_4bit"] is True

    capsys.readouterr()
    report_dir = tmp_path / "report"
    assert run("eval", "--guard", str(out2), "--data", str(toy_data["test"]), "--out", str(report_dir)) == 0
    summary = json.loads(capsys.readouterr().out)
    report = json.loads((report_dir / "eval.json").read_text())
    assert summary["examples"] == report["examples"] == 8
    assert summary["type_macro_f1"] == round(report["type"]["macro_f1"], 4)
    assert summary["flagged_recall_unsafe"] == round(report["detection"]["recall"], 4)
    assert {"level_macro_f1", "flagged_fpr_safe", "type_ece", "level_ece"} <= set(summary)
    assert len(report["type"]["confusion"]) == 7 and sum(map(sum, report["type"]["confusion"])) == 8
    assert {"precision", "recall", "f1", "fpr"} <= set(report["level"]["classes"][0])
    for name in ("confusion_level", "confusion_type", "reliability_level", "reliability_type"):
        assert (report_dir / f"{name}.png").stat().st_size > 0


def test_bad_rows_stop_training_with_file_and_line_or_are_skipped_and_reported(
    stage1_settings: dict[str, Any], toy_data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    lines = toy_data["train"].read_text().splitlines()
    misspelt = lines[1][:-1] + ', "sefe_level": 1}'
    too_long = json.dumps({**json.loads(lines[2]), "prompt": "what " * 300})
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], misspelt, *lines[3:8], too_long]) + "\n")
    settings = {**stage1_settings, "train_data": str(bad), "image_root": str(toy_data["train"].parent)}
    config = write_yaml(tmp_path / "s1.yaml", {**settings, "max_length": 256})
    assert run("train", "stage1", "--config", str(config)) == 1
    error = capsys.readouterr().err
    assert f"{bad}:2:" in error and "sefe_level" in error

    assert run("train", "stage1", "--config", str(config), "--set", "skip_invalid_rows=true") == 0
    report = json.loads((Path(settings["output_dir"]) / "data_report.json").read_text())["train"]
    assert (report["rows"], report["kept"], report["skipped"]) == (8, 6, 2)
    assert [e.split(": ")[0] for e in report["errors"]] == [f"{bad}:2", f"{bad}:8"]
