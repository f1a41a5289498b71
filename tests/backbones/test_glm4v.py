"""The GLM-4V adapter: per-patch features taken before the tower's downsampling tail, the shared bar."""

from __future__ import annotations

import pytest
import torch
from family_conformance import FamilyConformance, TinyFamily, shaped_images

from psaguard.backbones import EncoderOnlyGlm4vBackbone, Glm4vBackbone, resolve_backbone


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> TinyFamily:
    return TinyFamily.build(tmp_path_factory.mktemp("glm4v"), "glm4v", Glm4vBackbone, EncoderOnlyGlm4vBackbone)


class TestGlm4v(FamilyConformance):
    """Everything every family adapter does, on the tiny GLM-4V."""


def test_project_matches_the_models_own_image_features(family):
    backbone = resolve_backbone(family.model)
    backbone.check_processor(family.processor)
    inputs = backbone.preprocess(family.processor, shaped_images())
    with torch.inference_mode():
        features = backbone.encode_images(**inputs)
        ours = backbone.project(features)
        theirs = family.model.model.get_image_features(**inputs).pooler_output
        _, hidden = backbone.tower_pass(inputs["pixel_values"], {"image_grid_thw": inputs["image_grid_thw"]})
    assert hidden.shape[-1] == backbone.vision_hidden_size  # per patch, before the downsample
    assert hidden.shape[0] == int(inputs["image_grid_thw"].prod(-1).sum())
    assert [t.shape for t in ours] == [t.shape for t in theirs]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, theirs))
