"""The SmolVLM adapter: Idefics3's layout under SmolVLM's own processor and model classes, the shared bar."""

from __future__ import annotations

import pytest
import torch
from family_conformance import FamilyConformance, TinyFamily, shaped_images

from psaguard.backbones import EncoderOnlySmolVLMBackbone, SmolVLMBackbone, resolve_backbone


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> TinyFamily:
    return TinyFamily.build(tmp_path_factory.mktemp("smolvlm"), "smolvlm", SmolVLMBackbone, EncoderOnlySmolVLMBackbone)


class TestSmolVLM(FamilyConformance):
    """Everything every family adapter does, on the tiny SmolVLM."""


def test_runs_are_the_processors_own_text_for_every_grid(family):
    backbone = resolve_backbone(family.model)
    backbone.check_processor(family.processor)
    processor = family.processor
    for image in shaped_images():
        features = backbone.encode_images(**backbone.preprocess(processor, [image]))
        run = backbone.image_runs(features, backbone.project(features))[0]
        text = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}]}], add_generation_prompt=False
        )
        ids = processor(images=[[image]], text=[text], return_tensors="pt")["input_ids"][0].tolist()
        start = ids.index(run[0])
        assert ids[start : start + len(run)] == run
        assert run.count(backbone.image_token_id) == sum(len(e) for e in backbone.project(features))


def test_pixel_attention_mask_reaches_the_tower(family):
    """A mask hiding part of a tile changes its features: the adapter passes the processor's mask through."""
    backbone = resolve_backbone(family.model)
    backbone.check_processor(family.processor)
    inputs = backbone.preprocess(family.processor, shaped_images()[:1])
    full = backbone.encode_images(**inputs)
    mask = inputs["pixel_attention_mask"].clone()
    mask[..., 16:, :] = 0
    half = backbone.encode_images(**{**inputs, "pixel_attention_mask": mask})
    assert not torch.allclose(full.patches, half.patches)
