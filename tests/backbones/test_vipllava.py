"""The VipLLaVA adapter: several CLIP layers, features handed over as one tensor, the shared bar."""

from __future__ import annotations

import pytest
import torch
from family_conformance import FamilyConformance, TinyFamily, projections
from transformers import LlavaProcessor

from psaguard import ProcessorError, SafetyGuard
from psaguard.backbones import EncoderOnlyVipLlavaBackbone, VipLlavaBackbone, resolve_backbone
from psaguard.testing import save_tiny_family


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> TinyFamily:
    # Two different CLIP layers, as the hub's checkpoints select several (the shrunk default repeats one).
    path = save_tiny_family(
        "vipllava", tmp_path_factory.mktemp("vipllava"), overrides={"vision_feature_layers": [-2, -1]}
    )
    return TinyFamily.load(path, LlavaProcessor, VipLlavaBackbone, EncoderOnlyVipLlavaBackbone)


class TestVipLlava(FamilyConformance):
    """Everything every family adapter does, on the tiny VipLLaVA."""

    def test_a_processor_of_another_family_is_refused(self, family: TinyFamily, next_processor) -> None:
        # VipLLaVA checkpoints ship LLaVA's own processor, so another family here is LLaVA-NeXT's.
        with pytest.raises(ProcessorError):
            SafetyGuard.attach(family.model, next_processor)


def test_project_matches_the_models_own_image_features(family):
    ours, theirs = projections(family)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs)) and len(ours) == len(theirs)
    backbone = resolve_backbone(family.model)
    assert backbone.vision_hidden_size == 2 * family.model.config.vision_config.hidden_size  # two layers
