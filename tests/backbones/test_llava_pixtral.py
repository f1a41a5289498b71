"""LLaVA with a Pixtral tower (pixtral-12b layout): non-square grids, [IMG_BREAK]/[IMG_END] runs, the shared bar."""

from __future__ import annotations

import pytest
import torch
from family_conformance import FamilyConformance, TinyFamily, projections, shaped_images

from psaguard import SafetyGuard
from psaguard.backbones import (
    EncoderOnlyLlavaPixtralBackbone,
    LlavaBackbone,
    LlavaPixtralBackbone,
    resolve_backbone,
)


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> TinyFamily:
    return TinyFamily.build(
        tmp_path_factory.mktemp("llava_pixtral"), "llava_pixtral", LlavaPixtralBackbone, EncoderOnlyLlavaPixtralBackbone
    )


class TestLlavaPixtral(FamilyConformance):
    """Everything every family adapter does, on a tiny LLaVA with a Pixtral tower."""


def test_the_pixtral_layout_wins_over_plain_llava_which_still_takes_clip_towers(family, tiny_model):
    assert family.model.config.model_type == "llava"
    assert type(resolve_backbone(family.model)) is LlavaPixtralBackbone
    assert type(resolve_backbone(tiny_model)) is LlavaBackbone


def test_non_square_images_classify_instead_of_failing_on_the_projector_grid(family):
    guard = SafetyGuard.attach(family.model, family.processor)
    inputs = guard.backbone.preprocess(family.processor, shaped_images())
    grids = [(int(h) // 4, int(w) // 4) for h, w in inputs["image_sizes"]]
    assert any(h != w for h, w in grids)
    features = guard.backbone.encode_images(**inputs)
    assert features.patches.shape[1] == guard.backbone.num_patches  # every grid pooled onto the square one
    assert all(v.error is None for v in guard.classify_batch(shaped_images(), ["what is this ?"] * 4))


def test_project_matches_the_models_own_image_features(family):
    ours, theirs = projections(family)
    assert [t.shape for t in ours] == [t.shape for t in theirs]
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
