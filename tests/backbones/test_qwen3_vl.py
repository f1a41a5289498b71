"""The Qwen3-VL adapter: DeepStack features travel with the image embeddings, the shared bar."""

from __future__ import annotations

import pytest
import torch
from family_conformance import FamilyConformance, TinyFamily, shaped_images
from generation_helpers import QUESTION, guard_for, user_turn

from psaguard.backbones import EncoderOnlyQwen3VLBackbone, Qwen3VLBackbone
from psaguard.generation.generator import chat_token_ids
from psaguard.injection import build_llm_inputs


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> TinyFamily:
    return TinyFamily.build(
        tmp_path_factory.mktemp("qwen3_vl"), "qwen3_vl", Qwen3VLBackbone, EncoderOnlyQwen3VLBackbone
    )


class TestQwen3VL(FamilyConformance):
    """Everything every family adapter does, on the tiny Qwen3-VL."""


def test_embeddings_and_deepstack_features_match_the_models_own(family):
    backbone = family.backbone()
    images = shaped_images()
    inputs = backbone.preprocess(family.processor, images)
    row = chat_token_ids(family.processor, [user_turn(QUESTION, 4)], backbone.placeholder_token_id, 4)
    with torch.inference_mode():
        features = backbone.encode_images(**inputs)
        ours = backbone.project(features)
        theirs = family.model.model.get_image_features(**inputs)
        layout = backbone.image_layout(features, ours)
        kwargs = build_llm_inputs([row], ours, layout=layout, pad_token_id=0, llm_tokens=None).model_kwargs()
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, theirs.pooler_output))
    deepstack = kwargs["mm_encoder_outputs"]["image"].deepstack_features
    assert len(deepstack) == len(theirs.deepstack_features) == 1
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(deepstack[0], theirs.deepstack_features[0]))


def test_deepstack_rows_of_the_safety_tokens_are_zero(family):
    guard = guard_for(family.model, family.processor, inject=True, level=0)
    backbone = guard.backbone
    features = backbone.encode_images(**backbone.preprocess(family.processor, shaped_images()[:1]))
    embeds = backbone.project(features)
    row = chat_token_ids(family.processor, [user_turn(QUESTION)], backbone.placeholder_token_id, 1)
    inputs = build_llm_inputs(
        [row],
        embeds,
        layout=backbone.image_layout(features, embeds),
        pad_token_id=family.processor.tokenizer.pad_token_id,
        llm_tokens=guard.modules.llm_tokens.detach(),
    )
    n = guard.config.tokens.num_tokens
    deepstack = inputs.model_kwargs()["mm_encoder_outputs"]["image"].deepstack_features[0][0]
    assert deepstack.shape[0] == n + len(embeds[0])
    assert torch.count_nonzero(deepstack[:n]) == 0 and torch.count_nonzero(deepstack[n:]) > 0
    with torch.inference_mode():
        logits = family.model(**inputs.model_kwargs()).logits
    assert torch.isfinite(logits).all()
