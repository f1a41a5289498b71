"""The CUDA paths: Stage I on a bf16 model with a 4-bit NF4 language model, then Stage II QLoRA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from psaguard.training.config import Stage1Config, Stage2Config
from psaguard.training.stage1 import train_stage1
from psaguard.training.stage2 import train_stage2

pytestmark = pytest.mark.gpu


def test_stage1_with_nf4_language_model_then_qlora_stage2_on_cuda(
    stage1_settings: dict[str, Any], tmp_path: Path
) -> None:
    import torch

    cuda = {"model_dtype": "bfloat16", "quant": {"load_in_4bit": True}, "mixed_precision": "bf16", "max_steps": 6}
    stage1 = Stage1Config(**{**stage1_settings, **cuda, "gradient_checkpointing": True})
    out1 = train_stage1(stage1)
    records = [record for record in _history(out1) if "loss" in record]
    assert records[-1]["head_loss"] < records[0]["head_loss"]
    assert records[-1]["gpu_mem_gib"] > 0
    assert torch.cuda.max_memory_allocated() > 0

    settings = {k: v for k, v in stage1_settings.items() if k != "guard"}
    stage2 = Stage2Config(
        **{**settings, **cuda, "guard": str(out1), "output_dir": str(tmp_path / "s2"), "lora": {"r": 8}}
    )
    out2 = train_stage2(stage2)
    assert (out2 / "adapter" / "adapter_model.safetensors").is_file()
    losses = [r["lm_loss"] for r in _history(out2) if "lm_loss" in r]
    assert all(loss == loss and loss < 20 for loss in losses)  # finite and sane in bf16/NF4


def _history(out: Path) -> list[dict[str, float]]:
    import json

    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
