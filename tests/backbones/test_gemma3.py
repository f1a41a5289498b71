"""The Gemma 3 adapter: ``<start_of_image>`` placeholder vs soft tokens, bidirectional image blocks, the shared bar."""

from __future__ import annotations

import pytest
import torch
from family_conformance import FamilyConformance, TinyFamily, projections, shaped_images
from generation_helpers import QUESTION, guard_for, user_turn
from transformers import AutoProcessor

from psaguard.backbones import EncoderOnlyGemma3Backbone, Gemma3Backbone, resolve_backbone
from psaguard.errors import ProcessorError
from psaguard.injection import build_llm_inputs
from psaguard.testing import build_tiny_family, save_tiny_family


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> TinyFamily:
    path = save_tiny_family("gemma3", tmp_path_factory.mktemp("gemma3"))
    return TinyFamily.load(path, AutoProcessor, Gemma3Backbone, EncoderOnlyGemma3Backbone)


class TestGemma3(FamilyConformance):
    """Everything every family adapter does, on the tiny Gemma 3."""


def test_project_matches_the_models_own_image_features(family):
    ours, theirs = projections(family)
    assert [t.shape for t in ours] == [t.shape for t in theirs]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours, theirs))


def test_the_safety_projector_sees_the_towers_full_patch_grid(family):
    backbone = family.backbone()
    features = backbone.encode_images(**backbone.preprocess(family.processor, shaped_images()))
    assert features.patches.shape == (4, 64, backbone.vision_hidden_size)  # 8 x 8 patches per resized image
    assert [len(e) for e in backbone.project(features)] == [family.model.config.mm_tokens_per_image] * 4


def test_the_run_is_the_processors_image_sequence(family):
    backbone = family.backbone()
    features = backbone.encode_images(**backbone.preprocess(family.processor, shaped_images()[:1]))
    run = backbone.image_runs(features, backbone.project(features))[0]
    tokenizer = family.processor.tokenizer
    expected = tokenizer(family.processor.full_image_sequence, add_special_tokens=False)["input_ids"]
    assert run == expected
    boi, soft, eoi = tokenizer.convert_tokens_to_ids([tokenizer.boi_token, tokenizer.image_token, tokenizer.eoi_token])
    assert run == [boi, *[soft] * 16, eoi]
    assert backbone.placeholder_token_id == boi != backbone.image_token_id == soft


def test_safety_tokens_join_the_images_bidirectional_block(family):
    guard = guard_for(family.model, family.processor, inject=True, level=0)
    backbone = guard.backbone
    features = backbone.encode_images(**backbone.preprocess(family.processor, shaped_images()[:1]))
    embeds = backbone.project(features)
    inputs = build_llm_inputs(
        [[5, backbone.placeholder_token_id, 9]],
        embeds,
        layout=backbone.image_layout(features, embeds),
        pad_token_id=0,
        llm_tokens=guard.modules.llm_tokens.detach(),
    )
    types = inputs.model_kwargs()["token_type_ids"][0].tolist()
    ids = inputs.input_ids[0].tolist()
    n = guard.config.tokens.num_tokens
    assert types == [int(t == backbone.image_token_id) for t in ids]
    assert sum(types) == n + 16  # safety tokens + soft tokens: one contiguous block
    start = types.index(1)
    assert types[start : start + n + 16] == [1] * (n + 16)


def test_image_attention_is_bidirectional_so_token_type_ids_matter(family):
    """Without token_type_ids the model's own logits change: the parity tests would notice a missing input."""
    processor = family.processor
    text = processor.apply_chat_template([user_turn(QUESTION)], add_generation_prompt=True)
    inputs = processor(images=shaped_images()[:1], text=[text], return_tensors="pt")
    with torch.inference_mode():
        full = family.model(**inputs).logits
        causal = family.model(**{k: v for k, v in inputs.items() if k != "token_type_ids"}).logits
    assert not torch.allclose(full[:, -1], causal[:, -1], atol=1e-4)


def test_a_pan_and_scan_processor_is_refused(family):
    processor = build_tiny_family("gemma3").processor
    processor.image_processor.do_pan_and_scan = True
    with pytest.raises(ProcessorError, match="pan-and-scan"):
        resolve_backbone(family.model).check_processor(processor)


def test_a_processor_of_another_family_is_refused_at_check(family, tiny_processor):
    with pytest.raises(ProcessorError):
        resolve_backbone(family.model).check_processor(tiny_processor)
