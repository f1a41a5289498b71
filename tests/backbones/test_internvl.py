"""The InternVL adapter: tiles plus a thumbnail, pixel shuffle, <img>...</img> runs, the shared bar."""

from __future__ import annotations

import pytest
import torch
from family_conformance import FamilyConformance, TinyFamily, shaped_images

from psaguard.backbones import EncoderOnlyInternVLBackbone, InternVLBackbone, resolve_backbone
from psaguard.testing import build_tiny_family


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> TinyFamily:
    return TinyFamily.build(
        tmp_path_factory.mktemp("internvl"), "internvl", InternVLBackbone, EncoderOnlyInternVLBackbone
    )


class TestInternVL(FamilyConformance):
    """Everything every family adapter does, on the tiny InternVL."""


def _model_features(model, pixel_values: torch.Tensor):
    config = model.config
    return model.model.get_image_features(
        pixel_values,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
    )


@pytest.mark.parametrize("layer", [-2, -1])
def test_project_matches_the_models_own_image_features(family, layer):
    own = family.model.config.vision_feature_layer
    model = (
        family.model if layer == own else build_tiny_family("internvl", overrides={"vision_feature_layer": layer}).model
    )
    backbone = resolve_backbone(model)
    backbone.check_processor(family.processor)
    inputs = backbone.preprocess(family.processor, shaped_images())
    with torch.inference_mode():
        ours = backbone.project(backbone.encode_images(**inputs))
        theirs = _model_features(model, inputs["pixel_values"]).pooler_output  # (all tiles, tokens per tile, D)
    per_tile = theirs.shape[1]
    assert [len(t) // per_tile for t in ours] == [1, 5, 5, 4]  # a square image is one tile; others add a thumbnail
    torch.testing.assert_close(torch.cat(ours), theirs.flatten(0, 1))


def test_the_safety_grid_is_each_images_global_view(family):
    backbone = family.backbone()
    inputs = backbone.preprocess(family.processor, shaped_images())
    with torch.inference_mode():
        features = backbone.encode_images(**inputs)
        hidden = _model_features(family.model, inputs["pixel_values"]).hidden_states
    config = family.model.config
    selected = hidden[config.vision_feature_layer]  # the states the model's projector reads, every tile
    selected = selected[:, 1:] if config.vision_feature_select_strategy == "default" else selected
    torch.testing.assert_close(features.patches[1], selected[5])  # image 1: tiles 1-5, its thumbnail last
    assert features.patches.shape == (4, backbone.num_patches, backbone.vision_hidden_size)


def test_runs_wrap_every_tile_of_an_image_in_img_tags(family):
    backbone = family.backbone()
    features = backbone.encode_images(**backbone.preprocess(family.processor, shaped_images()[:2]))
    runs = backbone.image_runs(features, backbone.project(features))
    processor = family.processor
    tags = [processor.start_image_token, processor.image_token, processor.end_image_token]
    start, context, end = processor.tokenizer.convert_tokens_to_ids(tags)
    assert runs == [[start, *[context] * 16, end], [start, *[context] * 80, end]]
