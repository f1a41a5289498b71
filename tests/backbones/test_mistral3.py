"""The Mistral3 adapter: Pixtral grids at native aspect ratios, [IMG_BREAK] / [IMG_END] runs, the shared bar."""

from __future__ import annotations

import pytest
import torch
from family_conformance import FamilyConformance, TinyFamily, shaped_images

from psaguard.backbones import EncoderOnlyMistral3Backbone, Mistral3Backbone, resolve_backbone
from psaguard.errors import InvalidInputError, ProcessorError


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> TinyFamily:
    return TinyFamily.build(
        tmp_path_factory.mktemp("mistral3"), "mistral3", Mistral3Backbone, EncoderOnlyMistral3Backbone
    )


class TestMistral3(FamilyConformance):
    """Everything every family adapter does, on the tiny Mistral3."""


def test_project_matches_the_models_own_image_features(family):
    backbone = family.backbone()
    inputs = backbone.preprocess(family.processor, shaped_images())
    with torch.inference_mode():
        ours = backbone.project(backbone.encode_images(**inputs))
        theirs = family.model.model.get_image_features(**inputs).pooler_output
    assert [t.shape for t in ours] == [t.shape for t in theirs]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours, theirs))


def test_native_grids_are_pooled_onto_the_square_safety_grid(family):
    backbone = family.backbone()
    inputs = backbone.preprocess(family.processor, shaped_images())
    # (height, width) resized to multiples of 8 px, longer side 32: 4 px patches.
    assert inputs["image_sizes"].tolist() == [[32, 32], [24, 32], [32, 24], [16, 32]]
    with torch.inference_mode():
        features = backbone.encode_images(**inputs)
        hidden = family.model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).hidden_states
    states = hidden[family.model.config.vision_feature_layer][0]  # every image's patches, packed: 64 + 48 + 48 + 32
    assert len(states) == 64 + 48 + 48 + 32  # patches per image, not a square grid
    assert features.patches.shape == (4, backbone.num_patches, backbone.vision_hidden_size)
    torch.testing.assert_close(features.patches[0], states[:64])  # an 8x8 grid is the safety grid itself


def test_image_runs_are_the_processors_rows_with_breaks(family):
    backbone = family.backbone()
    features = backbone.encode_images(**backbone.preprocess(family.processor, shaped_images()[3:]))
    run = backbone.image_runs(features, backbone.project(features))[0]
    img, brk, end = family.processor.tokenizer.convert_tokens_to_ids(["[IMG]", "[IMG_BREAK]", "[IMG_END]"])
    assert run == [img] * 4 + [brk] + [img] * 4 + [end]  # 16 x 32 px: 2 rows of 4 merged patches


def test_a_processor_without_the_end_token_is_refused(family, tiny_processor):
    with pytest.raises(ProcessorError):
        resolve_backbone(family.model).check_processor(tiny_processor)


def test_image_sizes_that_do_not_fit_the_pixels_are_refused(family):
    backbone = family.backbone()
    inputs = backbone.preprocess(family.processor, shaped_images()[:2])
    with pytest.raises(InvalidInputError):
        backbone.encode_images(inputs["pixel_values"])
    with pytest.raises(InvalidInputError, match="multiples"):
        backbone.encode_images(inputs["pixel_values"], image_sizes=torch.tensor([[30, 32], [24, 32]]))
