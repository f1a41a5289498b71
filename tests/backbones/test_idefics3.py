"""The Idefics3 adapter: tiles + global view, tagged runs, pixel_attention_mask, pixel shuffle, the shared bar."""

from __future__ import annotations

import pytest
import torch
from family_conformance import FamilyConformance, TinyFamily, shaped_images

from psaguard.backbones import EncoderOnlyIdefics3Backbone, Idefics3Backbone, resolve_backbone
from psaguard.errors import InvalidInputError, ProcessorError


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
    features = backbone.encode_images(**inputs)
    # 2 x 2 tiles + the global view, except the very wide 24 x 64 image: 1 x 2 tiles + global.
    assert features.tiles == (5, 5, 5, 3)
    assert features.tile_grids.tolist() == [[2, 2], [2, 2], [2, 2], [1, 2]]
    assert features.patches.shape == (4, backbone.num_patches, backbone.vision_hidden_size)
    alone = backbone.encode_images(**backbone.preprocess(family.processor, shaped_images()[3:]))
    torch.testing.assert_close(features.patches[3], alone.patches[0])  # the last tile of its own image
    torch.testing.assert_close(alone.patches[0], alone.selected[2])


def test_the_run_is_the_processors_text_with_tile_tags(family):
    backbone = family.backbone()
    features = backbone.encode_images(**backbone.preprocess(family.processor, shaped_images()[3:]))
    run = backbone.image_runs(features, backbone.project(features))[0]
    tokens = family.processor.tokenizer.convert_ids_to_tokens(run)
    image = ["<image>"] * 16
    fake = "<fake_token_around_image>"
    assert tokens == [fake, "<row_1_col_1>", *image, fake, "<row_1_col_2>", *image, fake, "<global-img>", *image, fake]


def test_tile_grids_are_read_back_from_the_processors_ids(family):
    backbone = family.backbone()
    processor = family.processor
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "what ?"}]}],
        add_generation_prompt=True,
    )
    inputs = processor(images=[shaped_images()[2:4]], text=[text], return_tensors="pt")
    grids = backbone.image_inputs_from_ids(inputs["input_ids"], inputs["attention_mask"])
    assert grids["rows"].tolist() == [2, 1] and grids["cols"].tolist() == [2, 2]


def test_tile_grids_that_do_not_fit_the_pixels_are_refused(family):
    backbone = family.backbone()
    inputs = backbone.preprocess(family.processor, shaped_images()[:1])
    with pytest.raises(InvalidInputError, match="rows/cols"):
        backbone.encode_images(inputs["pixel_values"], rows=torch.tensor([1]), cols=torch.tensor([1]))
    with pytest.raises(InvalidInputError):
        backbone.encode_images(inputs["pixel_values"])


def test_a_processor_of_another_family_is_refused_by_name(family, tiny_processor):
    with pytest.raises(ProcessorError):
        resolve_backbone(family.model).read_processor(tiny_processor)
