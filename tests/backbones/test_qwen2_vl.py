"""The Qwen2-VL adapter: pre-merger features in patch-grid order, M-RoPE inputs, safety tokens as text, the bar."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from family_conformance import FamilyConformance, TinyFamily, projections, shaped_images
from generation_helpers import QUESTION, capture_llm_inputs, guard_for, plain_generate, spy_generate, user_turn
from PIL import Image
from transformers import Qwen2VLImageProcessorPil

from psaguard.backbones import EncoderOnlyQwen2VLBackbone, Qwen2VLBackbone
from psaguard.errors import InvalidInputError
from psaguard.generation.generator import chat_token_ids
from psaguard.images.budget import DEFAULT_MAX_VISION_PATCHES, fit_patch_budget
from psaguard.injection import build_llm_inputs


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> TinyFamily:
    return TinyFamily.build(
        tmp_path_factory.mktemp("qwen2_vl"), "qwen2_vl", Qwen2VLBackbone, EncoderOnlyQwen2VLBackbone
    )


class TestQwen2VL(FamilyConformance):
    """Everything every family adapter does, on the tiny Qwen2-VL."""


def test_project_matches_the_models_own_image_features(family):
    ours, theirs = projections(family)
    assert [t.shape for t in ours] == [t.shape for t in theirs]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours, theirs))


def test_the_safety_grid_is_the_images_patch_grid_in_raster_order_pooled(family):
    backbone = family.backbone()
    image = shaped_images()[1]  # 40 x 56 px -> a 10 x 14 patch grid
    inputs = backbone.preprocess(family.processor, [image])
    assert inputs["image_grid_thw"].tolist() == [[1, 10, 14]]
    features = backbone.encode_images(**inputs)
    with torch.inference_mode():  # the tower's states, in merge-block order: (h/2, w/2, 2, 2)
        hidden = family.model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).last_hidden_state
    grid = hidden.reshape(5, 7, 2, 2, -1).permute(0, 2, 1, 3, 4).reshape(10, 14, -1)
    torch.testing.assert_close(grid[0, 1], hidden[1])  # row 0, column 1: second patch of the first block
    torch.testing.assert_close(grid[1, 0], hidden[2])  # row 1, column 0: third patch of the first block
    torch.testing.assert_close(grid[0, 2], hidden[4])  # the next block starts at column 2
    pooled = torch.nn.functional.adaptive_avg_pool2d(grid.permute(2, 0, 1)[None], 24)[0].flatten(1).T
    torch.testing.assert_close(features.patches[0], pooled)
    assert features.patches.shape == (1, 24 * 24, backbone.vision_hidden_size)


def _inputs(family, inject: bool):
    guard = guard_for(family.model, family.processor, inject=inject, level=0)
    backbone = guard.backbone
    image = shaped_images()[1]
    features = backbone.encode_images(**backbone.preprocess(family.processor, [image]))
    embeds = backbone.project(features)
    row = chat_token_ids(family.processor, [user_turn(QUESTION)], backbone.placeholder_token_id, 1)
    inputs = build_llm_inputs(
        [row],
        embeds,
        layout=backbone.image_layout(features, embeds),
        pad_token_id=family.processor.tokenizer.pad_token_id,
        llm_tokens=guard.modules.llm_tokens if inject else None,
    )
    return guard, inputs


def test_without_safety_tokens_the_model_inputs_are_the_processors(family):
    _, inputs = _inputs(family, inject=False)
    text = family.processor.apply_chat_template([user_turn(QUESTION)], add_generation_prompt=True)
    plain = family.processor(images=[shaped_images()[1]], text=[text], return_tensors="pt")
    kwargs = inputs.model_kwargs()
    assert torch.equal(kwargs["input_ids"], plain["input_ids"])
    assert torch.equal(kwargs["mm_token_type_ids"], plain["mm_token_type_ids"])
    assert torch.equal(kwargs["image_grid_thw"], plain["image_grid_thw"])


def test_safety_tokens_take_text_positions_before_the_images_grid(family):
    guard, inputs = _inputs(family, inject=True)
    kwargs = inputs.model_kwargs()
    n = guard.config.tokens.num_tokens
    ids, types = kwargs["input_ids"][0], kwargs["mm_token_type_ids"][0]
    image = guard.backbone.image_token_id
    start = int((ids == image).nonzero()[0])
    assert types[start : start + n].tolist() == [0] * n  # the safety tokens: text-like
    assert types[start + n : start + n + 35].tolist() == [1] * 35  # 5 x 7 merged patches: the grid
    positions, _ = family.model.model.get_rope_index(
        kwargs["input_ids"],
        kwargs["mm_token_type_ids"],
        kwargs["image_grid_thw"],
        attention_mask=kwargs["attention_mask"],
    )
    safety = positions[:, 0, start : start + n]
    assert torch.equal(safety, (torch.arange(n) + start).expand(3, n))  # 1-D positions, as text
    grid = positions[:, 0, start + n : start + n + 35]
    assert grid[1].reshape(5, 7)[:, 0].tolist() == [start + n + r for r in range(5)]  # rows follow the safety run
    assert grid[2].reshape(5, 7)[0].tolist() == [start + n + c for c in range(7)]


def test_the_lm_loss_trains_the_safety_tokens_under_m_rope(family):
    """With the safety tokens on, the LM loss reaches them through the model's M-RoPE forward and falls."""
    guard, _ = _inputs(family, inject=True)
    llm_tokens = guard.modules.llm_tokens
    optimizer = torch.optim.Adam([llm_tokens], lr=0.05)
    backbone = guard.backbone
    image = shaped_images()[1]
    with torch.no_grad():
        features = backbone.encode_images(**backbone.preprocess(family.processor, [image]))
        embeds = backbone.project(features)
    row = chat_token_ids(family.processor, [user_turn(QUESTION)], backbone.placeholder_token_id, 1)
    answer = family.processor.tokenizer("sorry i can't help with that", add_special_tokens=False)["input_ids"]
    losses = []
    for _ in range(6):
        inputs = build_llm_inputs(
            [row + answer],
            embeds,
            layout=backbone.image_layout(features, embeds),
            pad_token_id=family.processor.tokenizer.pad_token_id,
            llm_tokens=llm_tokens,
            labels=[[-100] * len(row) + answer],
            padding_side="right",
        )
        loss = family.model(**inputs.model_kwargs()).loss
        optimizer.zero_grad()
        loss.backward()
        assert llm_tokens.grad is not None and llm_tokens.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_grids_that_do_not_fit_the_pixels_are_refused(family):
    backbone = family.backbone()
    inputs = backbone.preprocess(family.processor, shaped_images()[:1])
    with pytest.raises(InvalidInputError, match="image_grid_thw"):
        backbone.encode_images(inputs["pixel_values"], image_grid_thw=torch.tensor([[1, 6, 8]]))
    with pytest.raises(InvalidInputError):
        backbone.encode_images(inputs["pixel_values"])


# ---------------------------------------------------------------------------- the vision budget
QWEN2_VL_7B_PIXELS = {"shortest_edge": 56 * 56, "longest_edge": 12_845_056}
"""Qwen2-VL-7B-Instruct's own processor limits (min_pixels, max_pixels): up to 65,536 patches of 14 px."""


def _processor_allowing_large_images(family):
    """The tiny processor with Qwen2-VL-7B's pixel limits: it alone would keep a 2688^2 image at full size."""
    patch = family.model.config.vision_config.patch_size
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch, merge_size=2, temporal_patch_size=2, size=QWEN2_VL_7B_PIXELS
    )
    tiny = family.processor
    return family.processor_class(
        image_processor=image_processor, tokenizer=tiny.tokenizer, chat_template=tiny.chat_template
    )


def _noise(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_an_image_over_the_default_budget_is_judged_within_it(family):
    processor = _processor_allowing_large_images(family)
    guard = guard_for(family.model, processor, level=0)
    image = _noise(384, 256)  # 96 x 64 = 6,144 patches of 4 px at its own size
    assert processor.image_processor(images=[image])["image_grid_thw"].tolist() == [[1, 64, 96]]
    analysis = guard.analyze([image], [QUESTION])
    ((t, h, w),) = analysis.features.image_inputs["image_grid_thw"].tolist()
    assert t * h * w <= DEFAULT_MAX_VISION_PATCHES == guard.config.max_vision_patches
    assert abs(w / h - 384 / 256) < 0.1  # the aspect ratio is kept


def test_a_huge_image_is_bounded_and_the_model_generates_from_what_the_guard_judged(family):
    processor = _processor_allowing_large_images(family)
    budget = 256
    guard = guard_for(family.model, processor, inject=False, level=0, max_vision_patches=budget)
    image = _noise(2688, 1792)  # 301,056 patches of 4 px under the processor's own limits
    patch, unit = guard.backbone.resolution_unit
    judged = fit_patch_budget(image, patch, unit, budget)
    analysis = guard.analyze([image], [QUESTION])
    grid = analysis.features.image_inputs["image_grid_thw"].tolist()[0]
    assert grid[0] * grid[1] * grid[2] <= budget
    assert grid == [1, judged.height // patch, judged.width // patch]
    greedy = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False}
    with spy_generate(family.model) as outputs, capture_llm_inputs(family.model) as guarded:
        result = guard.generate(image, QUESTION, **greedy)
    with capture_llm_inputs(family.model) as plain:
        expected = plain_generate(family.model, processor, [judged], [user_turn(QUESTION)], **greedy)
    assert (result.action, result.generated) == ("allow", True)
    # The model got exactly the unguarded model's input for the judged (downscaled) image, and answered alike.
    assert torch.equal(guarded[0]["input_ids"], plain[0]["input_ids"])
    torch.testing.assert_close(guarded[0]["inputs_embeds"], plain[0]["inputs_embeds"])
    assert outputs[0][0, -4:].tolist() == expected


def test_images_within_the_budget_reach_the_processor_unchanged(family):
    backbone = family.backbone()
    images = shaped_images()
    assert all(a is b for a, b in zip(backbone.fit_vision_budget(images, DEFAULT_MAX_VISION_PATCHES), images))
