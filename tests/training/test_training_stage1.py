"""Stage I: the head learns, only the safety modules change, and the 4-bit frozen LM still passes gradients."""

from __future__ import annotations

from typing import Any

import torch

from psaguard import SafetyGuard
from psaguard.training.config import Stage1Config
from psaguard.training.loop import run_training
from psaguard.training.runtime import make_accelerator
from psaguard.training.stage1 import build_stage1


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {name for name, t in module.state_dict().items() if not torch.equal(before[name], t)}


def test_loss_and_head_error_fall_and_only_the_safety_modules_change(stage1_settings: dict[str, Any]) -> None:
    cfg = Stage1Config(**{**stage1_settings, "epochs": 5})  # 32 examples / batch 4 = 8 steps an epoch, 40 steps
    accelerator = make_accelerator(cfg)
    setup = build_stage1(cfg, accelerator)
    model, modules = setup.guard.model, setup.guard.modules
    model_before, modules_before = snapshot(model), snapshot(modules)

    state = run_training(setup.task, cfg, accelerator)

    train = [r for r in state.history if "loss" in r]
    assert len(train) == 40
    first, last = train[:4], train[-4:]

    def mean(records, key):
        return sum(r[key] for r in records) / len(records)

    assert mean(last, "loss") < 0.5 * mean(first, "loss")
    assert mean(last, "head_loss") < 0.2 * mean(first, "head_loss")
    assert mean(last, "level_acc") == 1.0 and mean(last, "type_acc") == 1.0
    assert mean(first, "level_acc") < 0.9
    assert changed(model_before, model) == set()
    assert changed(modules_before, modules) == set(modules_before)  # projector, both token sets, head
    saved = SafetyGuard.from_pretrained(cfg.output_dir, model, setup.guard.processor)
    for name, tensor in saved.modules.state_dict().items():
        torch.testing.assert_close(tensor, modules.state_dict()[name])


def test_frozen_4bit_language_model_still_trains_llm_tokens_after_an_evaluation(
    stage1_settings: dict[str, Any],
) -> None:
    import bitsandbytes as bnb

    cfg = Stage1Config(**{**stage1_settings, "quant": {"load_in_4bit": True}, "max_steps": 2})
    accelerator = make_accelerator(cfg)
    setup = build_stage1(cfg, accelerator)
    quantized = [m for m in setup.guard.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 7 * 2 and all(
        ".language_model." in n for n, m in setup.guard.model.named_modules() if m in quantized
    )
    objective, batch = setup.task.objective, setup.task.collate(setup.task.train_set[:4])

    def llm_token_grad() -> torch.Tensor:
        objective.train()
        objective.zero_grad(set_to_none=True)
        objective(batch).loss.backward()
        return setup.guard.modules.llm_tokens.grad.clone()

    before = llm_token_grad()
    objective.eval()
    with torch.no_grad():  # an evaluation pass must not switch bitsandbytes to its backward-less CPU kernel
        objective(batch)
    torch.testing.assert_close(llm_token_grad(), before)
    assert before.abs().sum() > 0

    weights = snapshot(setup.guard.model)
    tokens = setup.guard.modules.llm_tokens.detach().clone()
    run_training(setup.task, cfg, accelerator)
    assert changed(weights, setup.guard.model) == set()
    assert not torch.equal(tokens, setup.guard.modules.llm_tokens)


def test_starting_from_a_guard_with_custom_categories_drops_them(
    stage1_settings: dict[str, Any], tiny_model, tiny_processor, images, tmp_path, caplog
) -> None:
    from category_helpers import negatives, scam_examples

    torch.manual_seed(0)
    start = SafetyGuard.attach(tiny_model, tiny_processor)
    start.add_category("scam", scam_examples(images), level=3, negatives=negatives(images))
    start.save_pretrained(tmp_path / "start")
    cfg = Stage1Config(**{**stage1_settings, "init_guard": str(tmp_path / "start"), "max_steps": 1})
    with caplog.at_level("WARNING", logger="psaguard.training.stage1"):
        setup = build_stage1(cfg, make_accelerator(cfg))
    assert setup.guard.categories == ()  # fitted on features this run retrains
    assert "drops the custom category 'scam'" in caplog.text
