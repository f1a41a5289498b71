"""Each warning of psaguard.training.diagnostics fires on the run that provokes it (and not on a sound one)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from psaguard.training.config import Stage1Config, Stage2Config
from psaguard.training.diagnostics import ChanceCheck, label_entropy
from psaguard.training.loop import run_training
from psaguard.training.runtime import make_accelerator
from psaguard.training.stage1 import build_stage1
from psaguard.training.stage2 import build_stage2

DIAGNOSTICS = "psaguard.training.diagnostics"


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == DIAGNOSTICS and r.levelno == logging.WARNING]


def run_stage1(settings: dict[str, Any], caplog: pytest.LogCaptureFixture, **overrides: Any) -> list[str]:
    caplog.set_level(logging.WARNING, logger=DIAGNOSTICS)
    cfg = Stage1Config(**{**settings, **overrides})
    accelerator = make_accelerator(cfg)
    run_training(build_stage1(cfg, accelerator).task, cfg, accelerator)
    return warnings_of(caplog)


def test_a_head_loss_still_at_chance_is_warned_about(stage1_settings: dict[str, Any], caplog) -> None:
    found = run_stage1(stage1_settings, caplog, lr=1e-9, epochs=2, chance_check_share=0.5, lm_loss_weight=0)
    assert any("the safety head is not learning" in m and "after 8 of 16 steps" in m for m in found), found


def test_a_learning_head_is_not_warned_about() -> None:
    check = ChanceCheck(chance=label_entropy([0, 1, 0, 1]), total_steps=100, share=0.25)
    assert not check.check({"step": 10, "head_loss": 0.01})  # before the check point: not looked at
    assert not check.check({"step": 30, "head_loss": 0.2}) and check.fired is False
    at_chance = ChanceCheck(chance=label_entropy([0, 1, 0, 1]), total_steps=100, share=0.25)
    assert at_chance.check({"step": 30, "head_loss": 0.69})  # ln 2: the loss of predicting 50/50


def test_a_warmup_longer_than_the_run_is_warned_about(stage1_settings: dict[str, Any], caplog) -> None:
    found = run_stage1(stage1_settings, caplog, warmup_steps=300, max_steps=4, lm_loss_weight=0)
    assert any("warmup_steps=300 is not shorter than the run (4 steps)" in m for m in found), found


def test_llm_tokens_injected_but_never_trained_are_warned_about(stage1_settings: dict[str, Any], caplog) -> None:
    caplog.set_level(logging.WARNING, logger=DIAGNOSTICS)
    build_stage1(
        Stage1Config(**{**stage1_settings, "lm_loss_weight": 1.0}), make_accelerator(Stage1Config(**stage1_settings))
    )
    assert not any("llm_tokens untrained" in m for m in warnings_of(caplog))
    cfg = Stage1Config(**{**stage1_settings, "lm_loss_weight": 0.0})
    build_stage1(cfg, make_accelerator(cfg))
    assert any("lm_loss_weight=0 leaves llm_tokens untrained" in m for m in warnings_of(caplog))
    caplog.clear()
    off = {**stage1_settings, "lm_loss_weight": 0.0, "guard": {"tokens": {"num_tokens": 8, "inject_llm_tokens": False}}}
    build_stage1(Stage1Config(**off), make_accelerator(cfg))
    assert not any("llm_tokens untrained" in m for m in warnings_of(caplog))


def test_unknown_words_are_counted_in_the_data_report_and_warned_about(
    stage1_settings: dict[str, Any], toy_data: dict[str, Path], tmp_path: Path, caplog
) -> None:
    rows = [json.loads(line) for line in toy_data["train"].read_text().splitlines()]
    for row in rows:
        row["prompt"] = "zorblax quux " + row["prompt"]  # two words no tiny-model vocabulary has
    data = toy_data["train"].parent / "unknown_words.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    caplog.set_level(logging.WARNING, logger=DIAGNOSTICS)
    cfg = Stage1Config(**{**stage1_settings, "train_data": str(data), "max_steps": 1, "lm_loss_weight": 0})
    setup = build_stage1(cfg, make_accelerator(cfg))
    unknown = setup.reports["train"].unknown_tokens
    assert unknown is not None and unknown.unknown >= 2 * len(rows) and unknown.rate > cfg.max_unknown_token_rate
    assert unknown.words["zorblax"] == len(rows) and unknown.words["quux"] == len(rows)
    assert any("maps" in m and "zorblax" in m for m in warnings_of(caplog))
    clean = build_stage1(Stage1Config(**{**stage1_settings, "max_steps": 1}), make_accelerator(cfg))
    assert "zorblax" not in clean.reports["train"].unknown_tokens.words


def test_lora_leaving_out_an_untrained_lm_head_is_warned_about(stage2_settings: dict[str, Any], caplog) -> None:
    # The tiny model is randomly initialised: its output rows are exactly as initializer_range left them.
    settings = {**stage2_settings, "quant": {"load_in_4bit": False}, "gradient_checkpointing": False}
    caplog.set_level(logging.WARNING, logger=DIAGNOSTICS)
    cfg = Stage2Config(**settings)
    build_stage2(cfg, make_accelerator(cfg))
    assert any("lora.target_modules leaves lm_head frozen" in m for m in warnings_of(caplog))
    caplog.clear()
    with_head = Stage2Config(**{**settings, "lora": {"r": 8, "target_modules": f"({cfg.lora.target_modules})|lm_head"}})
    setup = build_stage2(with_head, make_accelerator(cfg))
    assert not any("lm_head" in m for m in warnings_of(caplog))
    assert any("lm_head.lora_" in name for name, p in setup.task.objective.named_parameters() if p.requires_grad)
