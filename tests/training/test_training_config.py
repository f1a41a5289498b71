"""Stage configs from YAML/JSON with overrides; the pure bitsandbytes and LoRA builders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from psaguard.errors import ConfigError
from psaguard.training.config import LoraSettings, QuantConfig, Stage1Config, Stage2Config, load_config
from psaguard.training.quant import build_bnb_config, build_lora_config

BASE = {"model": "m", "train_data": "t.jsonl", "output_dir": "out"}


def test_yaml_config_with_dotted_overrides(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("model: m\ntrain_data: t.jsonl\noutput_dir: out\nguard:\n  head:\n    pooling: first\n")
    cfg = load_config(Stage1Config, path, ["lr=1e-4", "quant.load_in_4bit=true", "guard.tokens.num_tokens=8"])
    assert cfg.lr == 1e-4 and cfg.quant.load_in_4bit
    assert cfg.guard.head.pooling == "first" and cfg.guard.tokens.num_tokens == 8
    assert cfg.head_loss_weight == 10.0 and cfg.num_safe == 3000  # paper defaults


def test_json_stage2_config_defaults_to_qlora_with_the_papers_lora(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    path.write_text(json.dumps({**BASE, "guard": "g"}))
    cfg = load_config(Stage2Config, path)
    assert cfg.quant.load_in_4bit and cfg.gradient_checkpointing
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (256, 16, 0.05)
    assert cfg.warmup_steps == 300 and cfg.num_safe is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["learning_rate=1"], "learning_rate"), (["lora.r=8"], "lora"), (["lr"], "key=value"), (["epochs=0"], "epochs")],
)
def test_invalid_keys_and_values_are_config_errors_naming_them(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(Stage1Config, None, [f"{k}={v}" for k, v in BASE.items()] + overrides)


def test_bnb_config_is_nf4_double_quant_bf16_and_skips_the_vision_side() -> None:
    assert build_bnb_config(QuantConfig()) is None
    bnb = build_bnb_config(QuantConfig(load_in_4bit=True))
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    assert bnb.bnb_4bit_compute_dtype == torch.bfloat16
    assert set(bnb.llm_int8_skip_modules) == {"model.vision_tower", "model.multi_modal_projector", "lm_head"}


def test_lora_targets_every_language_model_linear_and_nothing_else(tiny_model: nn.Module) -> None:
    lora = build_lora_config(LoraSettings(r=8))
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, lora.task_type) == (8, 16, 0.05, "CAUSAL_LM")
    names = {name for name, module in tiny_model.named_modules() if isinstance(module, nn.Linear)}
    targeted = {name for name in names if re.fullmatch(lora.target_modules, name)}
    assert targeted == {n for n in names if ".language_model." in n}
    assert len(targeted) == 7 * tiny_model.config.text_config.num_hidden_layers
