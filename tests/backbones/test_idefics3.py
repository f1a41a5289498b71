"""The Idefics3 adapter: tiles + global view, tagged runs, pixel_attention_mask, pixel shuffle, the shared bar."""

from __future__ import annotations

import pytest
import torch
from family_conformance import FamilyConformance, TinyFamily, shaped_images

from psaguard.backbones import EncoderOnlyIdefics3Backbone, Idefics3Backbone, resolve_backbone
from psaguard.errors import ProcessorError


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> TinyFamily:
    return TinyFamily.build(
        tmp_path_factory.mktemp("idefics3"), "idefics3", Idefics3Backbone, EncoderOnlyIdefics3Backbone
    )


class TestIdefics3(FamilyConformance):
    """Everything every family adapter does, on the tiny Idefics3."""


def test_project_matches_the_models_own_image_features(family):
    backbone = family.backbone()
    images = shaped_images()
    ours = []
    with torch.inference_mode():
        for image in images:
            ours += backbone.project(backbone.encode_images(**backbone.preprocess(family.processor, [image])))
        nested = family.processor.image_processor(images=[[i] for i in images], return_tensors="pt")
        theirs = family.model.model.get_image_features(
            nested["pixel_values"], nested["pixel_attention_mask"]
        ).pooler_output
    assert [t.shape for t in ours] == [t.shape for t in theirs]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, theirs))


def test_the_safety_projector_sees_each_images_global_view(family):
    backbone = family.backbone()
    inputs = backbone.preprocess(family.processor, shaped_images())
    with torch.inference_mode():
        features = backbone.encode_images(**inputs)
        hidden = family.model.model.get_image_features(
            inputs["pixel_values"], inputs["pixel_attention_mask"]
        ).last_hidden_state  # every real tile: 2 x 2 tiles + the global view, except the 24 x 64 image's 1 x 2 + 1
    assert features.patches.shape == (4, backbone.num_patches, backbone.vision_hidden_size)
    torch.testing.assert_close(features.patches, hidden[torch.tensor([5, 5, 5, 3]).cumsum(0) - 1])


def test_the_run_is_the_processors_text_with_tile_tags(family):
    backbone = family.backbone()
    features = backbone.encode_images(**backbone.preprocess(family.processor, shaped_images()[3:]))
    run = backbone.image_runs(features, backbone.project(features))[0]
    tokens = family.processor.tokenizer.convert_ids_to_tokens(run)
    image = ["<image>"] * 16
    fake = "<fake_token_around_image>"
    assert tokens == [fake, "<row_1_col_1>", *image, fake, "<row_1_col_2>", *image, fake, "<global-img>", *image, fake]


def test_a_processor_of_another_family_is_refused(family, tiny_processor):
    with pytest.raises(ProcessorError):
        resolve_backbone(family.model).check_processor(tiny_processor)
