"""The Qwen2.5-VL adapter: the tower's window order undone before the patch grid is read, the shared bar."""

from __future__ import annotations

import pytest
import torch
from family_conformance import FamilyConformance, TinyFamily, projections, shaped_images

from psaguard.backbones import EncoderOnlyQwen2_5_VLBackbone, Qwen2_5_VLBackbone


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> TinyFamily:
    return TinyFamily.build(
        tmp_path_factory.mktemp("qwen2_5_vl"), "qwen2_5_vl", Qwen2_5_VLBackbone, EncoderOnlyQwen2_5_VLBackbone
    )


class TestQwen2_5_VL(FamilyConformance):
    """Everything every family adapter does, on the tiny Qwen2.5-VL."""


def test_project_matches_the_models_own_image_features(family):
    ours, theirs = projections(family)
    assert [t.shape for t in ours] == [t.shape for t in theirs]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, theirs))


def test_the_towers_window_order_is_undone(family):
    """The tower's last hidden state is in window order; the states the adapter reads are in processor order."""
    backbone = family.backbone()
    inputs = backbone.preprocess(family.processor, shaped_images()[1:2])  # 10 x 14 patches: several windows
    tower = family.model.model.visual
    with torch.inference_mode():
        windowed = tower(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).last_hidden_state
        _, ordered = backbone.tower_pass(inputs["pixel_values"], {"image_grid_thw": inputs["image_grid_thw"]})
    assert not torch.allclose(windowed, ordered)  # the orders differ
    # The first window holds merge blocks 0, 1 (first block row) and 7, 8 (second block row, 7 blocks wide).
    blocks = ordered.reshape(-1, 4, ordered.shape[-1])
    first_window = windowed.reshape(-1, 4, windowed.shape[-1])[:4]
    torch.testing.assert_close(first_window, blocks[[0, 1, 7, 8]])
