"""The Aya Vision adapter: marked tiles, pixel shuffle, a template placeholder that is not the image token."""

from __future__ import annotations

import pytest
import torch
from family_conformance import FamilyConformance, TinyFamily, shaped_images
from generation_helpers import QUESTION, user_turn

from psaguard.backbones import AyaVisionBackbone, EncoderOnlyAyaVisionBackbone, resolve_backbone
from psaguard.errors import ProcessorError


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> TinyFamily:
    return TinyFamily.build(
        tmp_path_factory.mktemp("aya_vision"), "aya_vision", AyaVisionBackbone, EncoderOnlyAyaVisionBackbone
    )


class TestAyaVision(FamilyConformance):
    """Everything every family adapter does, on the tiny Aya Vision."""


def test_project_matches_the_models_own_image_features(family):
    backbone = family.backbone()
    inputs = backbone.preprocess(family.processor, shaped_images())
    config = family.model.config
    with torch.inference_mode():
        features = backbone.encode_images(**inputs)
        ours = backbone.project(features)
        theirs = family.model.model.get_image_features(
            inputs["pixel_values"],
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        )
    per_tile = theirs.pooler_output.shape[1]
    tiles = [len(t) // per_tile for t in ours]
    torch.testing.assert_close(torch.cat(ours), theirs.pooler_output.flatten(0, 1))
    selected = theirs.hidden_states[config.vision_feature_layer]  # the safety projector: each image's global view
    selected = selected[:, 1:] if config.vision_feature_select_strategy == "default" else selected
    torch.testing.assert_close(features.patches, selected[torch.tensor(tiles).cumsum(0) - 1])


def test_the_template_placeholder_is_not_the_models_image_token(family):
    backbone = family.backbone()
    tokenizer = family.processor.tokenizer
    assert backbone.placeholder_token_id == tokenizer.convert_tokens_to_ids("<image>")
    assert backbone.image_token_id == tokenizer.convert_tokens_to_ids("<|IMG_PATCH|>")
    text = family.processor.apply_chat_template([user_turn(QUESTION)], add_generation_prompt=True)
    assert tokenizer(text)["input_ids"].count(backbone.placeholder_token_id) == 1


def test_runs_mark_each_crop_and_the_global_view(family):
    backbone = family.backbone()
    features = backbone.encode_images(**backbone.preprocess(family.processor, shaped_images()[2:4]))
    runs = backbone.image_runs(features, backbone.project(features))
    tokens = family.processor.tokenizer.convert_ids_to_tokens(runs[1])  # 24 x 64 px: 3 crops and the global view
    patches = ["<|IMG_PATCH|>"] * (tokens.count("<|IMG_PATCH|>") // 4)
    markers = [["TILE", "_", "1"], ["TILE", "_", "2"], ["TILE", "_", "3"], ["TILE", "_", "GLOBAL"]]
    assert tokens == ["<|START_OF_IMG|>", *[t for marker in markers for t in (*marker, *patches)], "<|END_OF_IMG|>"]


def test_a_processor_whose_patch_token_is_not_the_models_is_refused(family, tiny_processor):
    with pytest.raises(ProcessorError):
        resolve_backbone(family.model).check_processor(tiny_processor)
