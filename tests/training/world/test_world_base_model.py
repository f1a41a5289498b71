from __future__ import annotations

import torch

from psaguard.training.world.base_model import (
    IGNORE_INDEX,
    BaseVlmConfig,
    build_base_vlm,
    encode_rows,
    pretrain_vision,
    train_safe_vqa,
    vision_corpus,
    vqa_accuracy,
)
from psaguard.training.world.build import read_rows, read_summary
from psaguard.training.world.concepts import ALL_STYLES


def test_encoded_rows_supervise_only_the_response(small_world):
    _, processor = build_base_vlm(BaseVlmConfig(text_hidden=64))
    row = next(r for r in read_rows(small_world, "train") if r.safe_level == 0)
    (item,) = encode_rows(processor, [row], small_world)
    supervised = item["input_ids"][item["labels"] != IGNORE_INDEX]
    text = processor.tokenizer.decode(supervised, skip_special_tokens=False)
    assert text.split() == [*row.response.split(), processor.tokenizer.eos_token]
    assert processor.tokenizer.unk_token_id not in item["input_ids"].tolist()


def test_a_few_sft_steps_lower_the_loss_and_accuracy_is_measured(small_world):
    config = BaseVlmConfig(text_hidden=64, steps=30, batch_size=4, lr=3e-3, warmup=2)
    model, processor = build_base_vlm(config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = read_rows(small_world, "train")[:80]
    result = train_safe_vqa(model, processor, rows, small_world, config)
    assert result.rows == sum(r.safe_level == 0 for r in rows)
    assert result.last_loss < 0.75 * result.first_loss
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert not any(n.startswith("model.vision_tower.") for n in changed)  # frozen, as in LLaVA's fine-tuning
    assert any(n.startswith("model.multi_modal_projector") for n in changed)
    assert all(p.requires_grad for p in model.parameters())
    accuracy = vqa_accuracy(model, processor, read_rows(small_world, "val")[:24], small_world, max_new_tokens=4)
    assert 0.0 <= accuracy <= 1.0


def test_vision_corpus_is_seeded_and_keeps_held_out_styles_unseen_unless_told(small_spec):
    scenes = vision_corpus(small_spec, 300)
    assert scenes == vision_corpus(small_spec, 300)
    assert scenes != vision_corpus(small_spec, 300, stream=1)
    assert {s.style for s in scenes} <= set(small_spec.train_styles)
    assert 0.35 < sum(s.risk_type is not None for s in scenes) / len(scenes) < 0.65
    # styles="all" stands in for a web-scale corpus: every style, held-out ones included (no safety labels).
    everything = vision_corpus(small_spec, 300, styles="all")
    assert {s.style for s in everything} == set(ALL_STYLES) and everything != scenes


def test_vision_pretraining_beats_chance_on_fresh_images(small_world):
    config = BaseVlmConfig(
        text_hidden=64, vision_hidden=64, vision_layers=2, vision_corpus=256, vision_steps=60, progress_bar=False
    )
    model, processor = build_base_vlm(config)
    global_state = torch.get_rng_state()
    accuracy = pretrain_vision(model, processor, read_summary(small_world).spec, config)
    # Mean of the subject (29 classes), colour (6) and count (3) probes: chance is about 0.18.
    assert accuracy > 0.4
    assert torch.equal(torch.get_rng_state(), global_state)  # probes and batches come from local generators
