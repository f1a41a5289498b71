"""The InternVL adapter: tiles plus a thumbnail, pixel shuffle, <img>...</img> runs, the shared bar."""

from __future__ import annotations

import pytest
import torch
from family_conformance import FamilyConformance, TinyFamily, shaped_images
from generation_helpers import QUESTION, user_turn

from psaguard.backbones import EncoderOnlyInternVLBackbone, InternVLBackbone, resolve_backbone
from psaguard.errors import InvalidInputError
from psaguard.testing import build_tiny_family


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> TinyFamily:
    return TinyFamily.build(
        tmp_path_factory.mktemp("internvl"), "internvl", InternVLBackbone, EncoderOnlyInternVLBackbone
    )


class TestInternVL(FamilyConformance):
    """Everything every family adapter does, on the tiny InternVL."""


def _model_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    config = model.config
    return model.model.get_image_features(
        pixel_values,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
    ).pooler_output


@pytest.mark.parametrize("layer", [-2, -1])
def test_project_matches_the_models_own_image_features(family, layer):
    own = family.model.config.vision_feature_layer
    model = (
        family.model if layer == own else build_tiny_family("internvl", overrides={"vision_feature_layer": layer}).model
    )
    backbone = resolve_backbone(model)
    inputs = backbone.preprocess(family.processor, shaped_images())
    with torch.inference_mode():
        ours = backbone.project(backbone.encode_images(**inputs))
        theirs = _model_features(model, inputs["pixel_values"])  # (all tiles, tokens per tile, D)
    assert [len(t) for t in ours] == [n * backbone.tokens_per_tile for n in inputs["num_patches"].tolist()]
    torch.testing.assert_close(torch.cat(ours), theirs.flatten(0, 1))


def test_the_safety_grid_is_each_images_global_view(family):
    backbone = family.backbone()
    inputs = backbone.preprocess(family.processor, shaped_images())
    # A square image is one tile; the others are 2 x 2 (or 3 x 1) tiles and a thumbnail.
    assert inputs["num_patches"].tolist() == [1, 5, 5, 4]
    features = backbone.encode_images(**inputs)
    assert torch.equal(features.patches[1], features.selected[5])  # image 1: rows 1-5, its thumbnail last
    assert features.patches.shape == (4, backbone.num_patches, backbone.vision_hidden_size)


def test_runs_wrap_every_tile_of_an_image_in_img_tags(family):
    backbone = family.backbone()
    features = backbone.encode_images(**backbone.preprocess(family.processor, shaped_images()[:2]))
    runs = backbone.image_runs(features, backbone.project(features))
    processor = family.processor
    tags = [processor.start_image_token, processor.image_token, processor.end_image_token]
    start, context, end = processor.tokenizer.convert_tokens_to_ids(tags)
    assert runs == [[start, *[context] * 16, end], [start, *[context] * 80, end]]


def test_tile_counts_are_read_back_from_the_processors_ids(family):
    backbone = family.backbone()
    text = family.processor.apply_chat_template([user_turn(QUESTION, num_images=2)], add_generation_prompt=True)
    inputs = family.processor(images=shaped_images()[:2], text=[text], return_tensors="pt")
    assert "num_patches" not in inputs  # the processor does not return it
    found = backbone.image_inputs_from_ids(inputs["input_ids"], inputs["attention_mask"])
    assert found["num_patches"].tolist() == [1, 5]
    broken = inputs["input_ids"].clone()
    broken[0, broken[0].tolist().index(backbone.image_token_id)] = family.processor.tokenizer.pad_token_id
    with pytest.raises(InvalidInputError, match="multiples"):
        backbone.image_inputs_from_ids(broken, inputs["attention_mask"])


def test_tile_counts_that_do_not_add_up_are_refused(family):
    backbone = family.backbone()
    inputs = backbone.preprocess(family.processor, shaped_images()[:2])
    with pytest.raises(InvalidInputError, match="add up"):
        backbone.encode_images(inputs["pixel_values"], num_patches=torch.tensor([1, 2]))
    with pytest.raises(InvalidInputError):
        backbone.encode_images(inputs["pixel_values"])
