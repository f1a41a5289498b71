"""Training on LLaVA-NeXT: tiles and ``image_sizes`` reach the vision pass, the LM sees the model's packed tiles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from psaguard import SafetyGuard, SafetyGuardConfig
from psaguard.training.collate import IGNORE_INDEX, Batch
from psaguard.training.config import Stage1Config, Stage2Config
from psaguard.training.data import Example
from psaguard.training.loop import run_training
from psaguard.training.objective import GuardObjective
from psaguard.training.runtime import build_collator, make_accelerator
from psaguard.training.stage1 import build_stage1
from psaguard.training.stage2 import build_stage2


def _examples(tmp_path: Path) -> list[Example]:
    """A square and a wide image: different tile counts, so the batch pads tiles and packs different lengths."""
    examples = []
    for index, (size, color) in enumerate((((32, 32), "red"), ((80, 40), "blue"))):
        path = tmp_path / f"{index}.png"
        Image.new("RGB", size, color).save(path)
        turns = (("what is in this picture ?", f"a {color} square"),)
        examples.append(Example(images=(path,), turns=turns, level=index, type=index, path="d.jsonl", line=index))
    return examples


def _expanded(batch: Batch, image_token_id: int, lengths: list[int]) -> dict[str, torch.Tensor]:
    """The batch as the model's own processor would write it: ``lengths[i]`` placeholders for image ``i``."""
    rows, targets = [], []
    for ids, labels, mask, length in zip(batch.input_ids, batch.labels, batch.attention_mask, lengths):
        ids, labels = ids[mask.bool()].tolist(), labels[mask.bool()].tolist()
        at = ids.index(image_token_id)
        rows.append(ids[:at] + [image_token_id] * length + ids[at + 1 :])
        targets.append(labels[:at] + [IGNORE_INDEX] * length + labels[at + 1 :])
    width = max(len(row) for row in rows)
    pad = [[0] * (width - len(row)) for row in rows]
    return {
        "input_ids": torch.tensor([row + p for row, p in zip(rows, pad)]),
        "attention_mask": torch.tensor([[1] * len(row) + p for row, p in zip(rows, pad)]),
        "labels": torch.tensor([row + [IGNORE_INDEX] * len(p) for row, p in zip(targets, pad)]),
    }


def test_lm_loss_is_the_models_own_loss_on_its_packed_tiles(next_model, next_processor, tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = SafetyGuardConfig.model_validate({"tokens": {"inject_llm_tokens": False}})
    guard = SafetyGuard.attach(next_model, next_processor, config)
    batch = build_collator(guard, Stage1Config(model="m", train_data="t", output_dir=str(tmp_path)))(
        _examples(tmp_path)
    )
    assert batch.pixel_values.shape[:2] == (2, 3)  # (images, most tiles, ...): the square one is padded
    assert batch.image_inputs["image_sizes"].tolist() == [[32, 32], [40, 80]]
    assert batch.to("cpu").image_inputs["image_sizes"].tolist() == [[32, 32], [40, 80]]

    with torch.no_grad():
        ours = GuardObjective(guard, next_model, lm_weight=1.0, head_weight=0.0)(batch).lm_loss
        backbone = guard.backbone
        lengths = [len(t) for t in backbone.project(backbone.encode_images(batch.pixel_values, **batch.image_inputs))]
        reference = next_model(
            **_expanded(batch, backbone.image_token_id, lengths),
            pixel_values=batch.pixel_values,
            image_sizes=batch.image_inputs["image_sizes"],
        ).loss
    assert lengths[0] != lengths[1]
    torch.testing.assert_close(ours, reference)


def test_stage1_on_a_next_model_learns_the_head_and_trains_only_the_safety_modules(
    stage1_settings: dict[str, Any], next_dir: Path, next_model, next_processor
) -> None:
    cfg = Stage1Config(**{**stage1_settings, "model": str(next_dir), "epochs": 2})  # 16 steps of 4 examples
    accelerator = make_accelerator(cfg)
    setup = build_stage1(cfg, accelerator)
    model_before = {n: t.clone() for n, t in setup.guard.model.state_dict().items()}
    tokens_before = setup.guard.modules.llm_tokens.detach().clone()

    state = run_training(setup.task, cfg, accelerator)

    train = [r for r in state.history if "loss" in r]
    assert len(train) == 16
    first, last = train[:4], train[-4:]
    head = [sum(r["head_loss"] for r in records) / len(records) for records in (first, last)]
    assert head[1] < 0.2 * head[0]
    assert all(r["level_acc"] == 1.0 for r in last)
    assert all(torch.equal(t, setup.guard.model.state_dict()[n]) for n, t in model_before.items())
    assert not torch.equal(tokens_before, setup.guard.modules.llm_tokens)  # the LM loss reached them
    saved = SafetyGuard.from_pretrained(cfg.output_dir, next_model, next_processor)
    assert saved.config.fingerprint.family == "llava_next"
    assert saved.classify(Image.new("RGB", (40, 80), "red"), "what is in this picture ?").error is None


def test_stage2_qlora_on_a_next_model_trains_only_the_adapter_which_loads_with_the_guard(
    stage2_settings: dict[str, Any], next_dir: Path, next_model, next_processor, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import LlavaNextForConditionalGeneration

    torch.manual_seed(0)
    config = SafetyGuardConfig.model_validate({"tokens": {"num_tokens": 8}})
    guard_dir = SafetyGuard.attach(next_model, next_processor, config).save_pretrained(tmp_path / "guard")
    cfg = Stage2Config(**{**stage2_settings, "model": str(next_dir), "guard": str(guard_dir), "max_steps": 3})
    accelerator = make_accelerator(cfg)
    setup = build_stage2(cfg, accelerator)
    adapted = setup.task.objective.model
    before = {n: t.detach().clone() for n, t in adapted.state_dict().items()}

    state = run_training(setup.task, cfg, accelerator)

    changed = {n for n, t in adapted.state_dict().items() if not torch.equal(before[n], t)}
    assert changed == {n for n in before if ".lora_" in n} and changed
    assert all(torch.isfinite(torch.tensor(r["lm_loss"])) for r in state.history)
    loaded = SafetyGuard.from_pretrained(
        cfg.output_dir, LlavaNextForConditionalGeneration.from_pretrained(next_dir), next_processor
    )
    assert isinstance(loaded.model, PeftModel)
    assert loaded.generate(Image.new("RGB", (40, 80), "blue"), "what is in this picture ?", max_new_tokens=2).text
