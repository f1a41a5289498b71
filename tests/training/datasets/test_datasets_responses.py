"""Converted rows carry the data set's answers with their harm labels (the response head's schema)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from dataset_layouts import LAYOUTS

from psaguard.taxonomy import DEFAULT_TAXONOMY
from psaguard.training.config import Stage1Config
from psaguard.training.data import read_jsonl
from psaguard.training.datasets import Target, convert, get_format
from psaguard.training.loop import run_training
from psaguard.training.runtime import make_accelerator
from psaguard.training.stage1 import build_stage1


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_spa_vl_gives_a_safe_and_an_unsafe_answer_per_request(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    LAYOUTS["spa-vl"](tmp_path / "s")
    out = tmp_path / "s.jsonl"
    report = convert(get_format("spa-vl"), tmp_path / "s", out)
    assert report.response_counts == {"harmful": 2, "harmless": 2}
    rows = _rows(out)
    caution = DEFAULT_TAXONOMY.level_by_code("caution").id
    for chosen, rejected in zip(rows[::2], rows[1::2]):  # same request, same image, the two answers
        assert (chosen["prompt"], chosen["image"]) == (rejected["prompt"], rejected["image"])
        assert (chosen["meta"]["preference"], chosen["response"], chosen["response_harmful"]) == (
            "chosen",
            "I can't help.",
            False,
        )
        assert "response_level" not in chosen
        assert (rejected["meta"]["preference"], rejected["response_harmful"]) == ("rejected", True)
        assert (rejected["response_level"], rejected["response_type"]) == (caution, rejected["safe_type"])
    examples, dataset = read_jsonl(out)  # the trainer's reader takes them as written
    assert dataset.kept == 4 and all(e.has_response_labels for e in examples)
    assert [e.response_level for e in examples] == [0, caution, 0, caution]
    safe_type = DEFAULT_TAXONOMY.safe_type_id
    assert [e.response_type == safe_type for e in examples] == [True, False, True, False]


def test_vlguard_answers_are_labelled_harmless(tmp_path: Path) -> None:
    LAYOUTS["vlguard"](tmp_path / "v")
    out = tmp_path / "v.jsonl"
    report = convert(get_format("vlguard"), tmp_path / "v", out, split="test")
    rows = _rows(out)
    assert all(row["response_harmful"] is False for row in rows if "response" in row)
    assert report.response_counts.get("harmless") == sum("response" in row for row in rows)
    assert all("response_harmful" not in row for row in rows if "response" not in row)


def test_request_only_benchmarks_count_no_answer(tmp_path: Path) -> None:
    LAYOUTS["figstep"](tmp_path / "f")
    report = convert(get_format("figstep"), tmp_path / "f", tmp_path / "f.jsonl")
    assert report.response_counts == {"none": report.rows}


def test_a_harmful_answer_to_a_request_mapped_safe_is_skipped_with_its_reason(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    LAYOUTS["beavertails-v"](tmp_path / "b")
    report = convert(
        get_format("beavertails-v"),
        tmp_path / "b",
        tmp_path / "b.jsonl",
        overrides={"animal_abuse": Target("safe", "safe")},
    )
    assert report.skipped == 1 and "harmful answer to a request mapped safe" in report.errors[0]
    assert report.response_counts == {"harmful": 1, "harmless": 2}


def test_stage1_trains_the_response_head_on_converted_rows(tmp_path: Path, stage1_settings: dict[str, Any]) -> None:
    pytest.importorskip("pyarrow")
    data = tmp_path / "data"
    LAYOUTS["beavertails-v"](data / "BeaverTails-V")
    train = data / "beavertails_v.jsonl"
    convert(get_format("beavertails-v"), data / "BeaverTails-V", train)
    settings = {
        **stage1_settings,
        "train_data": str(train),
        "max_steps": 1,
        "lr": 1e-2,
        "guard": {"tokens": {"num_tokens": 8}, "head": {"response_head": True}},
    }
    cfg = Stage1Config(**settings)
    accelerator = make_accelerator(cfg)
    setup = build_stage1(cfg, accelerator)
    before = {n: t.clone() for n, t in setup.guard.modules.response_head.state_dict().items()}
    run_training(setup.task, cfg, accelerator)
    after = setup.guard.modules.response_head.state_dict()
    assert any(not torch.equal(t, before[n]) for n, t in after.items())
