"""The LLaVA-OneVision adapter: NeXT-style tiles, anyres_max pooling, untiled multi-image samples, the shared bar."""

from __future__ import annotations

import pytest
import torch
from family_conformance import FamilyConformance, TinyFamily, projections, shaped_images
from generation_helpers import QUESTION, user_turn

from psaguard.backbones import EncoderOnlyLlavaOnevisionBackbone, LlavaOnevisionBackbone, resolve_backbone


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> TinyFamily:
    path = tmp_path_factory.mktemp("onevision")  # its processor: LlavaOnevisionProcessor without videos
    return TinyFamily.build(path, "llava_onevision", LlavaOnevisionBackbone, EncoderOnlyLlavaOnevisionBackbone)


class TestLlavaOnevision(FamilyConformance):
    """Everything every family adapter does, on the tiny LLaVA-OneVision (a Qwen2 language model)."""


def test_the_language_model_is_qwen2(family):
    assert family.model.config.text_config.model_type == "qwen2"


def test_project_matches_the_models_own_image_features(family):
    ours, theirs = projections(family)
    assert [t.shape for t in ours] == [t.shape for t in theirs]
    assert len({len(t) for t in ours}) > 1  # aspect ratios give different lengths
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_images_of_a_multi_image_request_are_seen_untiled_as_the_model_sees_them(family):
    backbone = resolve_backbone(family.model)
    images = shaped_images()[1:3]
    requested = backbone.preprocess_requests(family.processor, images, [2])
    features = backbone.encode_images(**requested)
    text = family.processor.apply_chat_template([user_turn(QUESTION, 2)], add_generation_prompt=True)
    inputs = family.processor(images=[images], text=[text], return_tensors="pt")
    assert inputs["batch_num_images"].tolist() == [2]
    with torch.inference_mode():
        ours = backbone.project(features)
        theirs = family.model.model.get_image_features(
            inputs["pixel_values"], inputs["image_sizes"], batch_num_images=inputs["batch_num_images"]
        ).pooler_output
    assert backbone.tile_counts(2, requested, ()) == [1, 1]
    assert all(t.shape[0] == backbone.num_patches + 1 for t in ours)  # one view + image_newline
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_videos_the_guard_cannot_judge_are_refused_not_passed_through(family):
    from psaguard import InvalidInputError, SafetyGuard

    guard = SafetyGuard.attach(family.model, family.processor)
    image = shaped_images()[0]
    text = family.processor.apply_chat_template([user_turn(QUESTION)], add_generation_prompt=True)
    inputs = family.processor(images=[image], text=[text], return_tensors="pt")
    video = torch.zeros(1, 2, 3, 32, 32)
    with pytest.raises(InvalidInputError, match="pixel_values_videos"):
        guard.wrap().generate(**inputs, pixel_values_videos=video, max_new_tokens=2)
    with pytest.raises(InvalidInputError, match="pixel_values_videos"):
        guard.generate(image, QUESTION, pixel_values_videos=video, max_new_tokens=2)
