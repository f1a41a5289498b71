"""Stage II: QLoRA on CPU trains only the adapter, which is saved in PEFT's format and loads with the guard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForImageTextToText

from psaguard import SafetyGuard
from psaguard.training.config import Stage2Config
from psaguard.training.loop import run_training
from psaguard.training.runtime import make_accelerator
from psaguard.training.stage2 import build_stage2


def test_qlora_trains_only_the_adapter_which_loads_with_peft_and_with_the_guard(
    stage2_settings: dict[str, Any], tiny_dir: Path, tiny_processor
) -> None:
    import bitsandbytes as bnb

    cfg = Stage2Config(**{**stage2_settings, "max_steps": 3})
    assert cfg.quant.load_in_4bit and cfg.gradient_checkpointing
    accelerator = make_accelerator(cfg)
    setup = build_stage2(cfg, accelerator)
    adapted = setup.task.objective.model
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in adapted.modules())
    before = {n: t.detach().clone() for n, t in adapted.state_dict().items()}
    modules_before = {n: t.detach().clone() for n, t in setup.guard.modules.state_dict().items()}

    run_training(setup.task, cfg, accelerator)

    changed = {n for n, t in adapted.state_dict().items() if not torch.equal(before[n], t)}
    lora = {n for n in before if ".lora_" in n}
    assert len(lora) == 2 * 7 * 2 and changed == lora
    assert all(torch.equal(t, setup.guard.modules.state_dict()[n]) for n, t in modules_before.items())

    out = cfg.output_dir
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "psaguard_config.json").is_file()
    trained = {n: t for n, t in adapted.state_dict().items() if ".lora_" in n}
    plain = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    loaded = PeftModel.from_pretrained(plain, out / "adapter")
    for name, tensor in trained.items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor.to(loaded.state_dict()[name].dtype))

    guard = SafetyGuard.from_pretrained(out, AutoModelForImageTextToText.from_pretrained(tiny_dir), tiny_processor)
    assert isinstance(guard.model, PeftModel)
    untouched = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    guard = SafetyGuard.from_pretrained(out, untouched, tiny_processor, load_adapter=False)
    assert guard.model is untouched and not any(".lora_" in n for n, _ in untouched.named_parameters())
