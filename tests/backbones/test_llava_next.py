"""The LLaVA-NeXT adapter: any-resolution tiles behind the same guard API as LLaVA-1.5."""

import pytest
import torch
from generation_helpers import QUESTION, count_calls, guard_for, plain_generate, spy_generate, user_turn

from psaguard import CheckpointMismatchError, SafetyGuard
from psaguard.backbones import LlavaNextBackbone, resolve_backbone

PROMPTS = ["what is in this image ?", "describe the picture", "how many circle are there ?"]
# min_new_tokens keeps EOS away so the comparison covers every step, not just an early stop.
GREEDY = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}


@pytest.fixture
def next_guard(next_model, next_processor):
    torch.manual_seed(0)
    return SafetyGuard.attach(next_model, next_processor)


def test_attach_resolves_the_next_family_and_classifies_every_aspect_ratio(next_guard, shaped_images):
    assert isinstance(next_guard.backbone, LlavaNextBackbone)
    assert next_guard.config.fingerprint.family == "llava_next"
    verdicts = next_guard.classify_batch(shaped_images, PROMPTS)
    assert len(verdicts) == 3
    assert all(v.error is None and abs(sum(v.level_probs.values()) - 1) < 1e-4 for v in verdicts)


def test_tiles_follow_the_aspect_ratio_and_the_safety_grid_is_the_base_tile(next_model, next_processor, shaped_images):
    backbone = resolve_backbone(next_model)
    inputs = backbone.preprocess(next_processor, shaped_images)
    # Square: base + 1 tile; 80x40 and 40x80: base + 2 tiles, laid out differently.
    assert backbone.tile_counts(8, inputs, ()) == [2, 3, 3]
    with torch.inference_mode():
        features = backbone.encode_images(**inputs)
        hidden = next_model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).hidden_states
    assert features.patches.shape == (3, backbone.num_patches, backbone.vision_hidden_size)
    selected = hidden[next_model.config.vision_feature_layer][:, 1:]  # the states the projector reads, every tile
    assert torch.equal(features.patches[1], selected[2])  # image 1's base tile follows image 0's 2 tiles


def test_project_matches_the_models_own_image_features(next_model, next_processor, shaped_images):
    backbone = resolve_backbone(next_model)
    inputs = backbone.preprocess(next_processor, shaped_images)
    with torch.inference_mode():
        ours = backbone.project(backbone.encode_images(**inputs))
        theirs = next_model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output
    assert [t.shape for t in ours] == [t.shape for t in theirs]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours, theirs))
    assert len({t.shape[0] for t in ours}) > 1  # packed lengths differ by layout


def test_classify_batch_equals_single_requests(next_guard, shaped_images):
    batch = next_guard.classify_batch(shaped_images, PROMPTS)
    for image, prompt, together in zip(shaped_images, PROMPTS, batch):
        alone = next_guard.classify(image, prompt)
        assert alone.action == together.action
        assert alone.level_probs == pytest.approx(together.level_probs, abs=1e-5)
        assert alone.type_probs == pytest.approx(together.type_probs, abs=1e-5)


def test_vision_tower_runs_once_per_classify(next_guard, next_model, shaped_images):
    with count_calls(next_model.model.vision_tower) as calls:
        next_guard.classify_batch(shaped_images, PROMPTS)
    assert calls == [1]


def test_save_then_load_gives_identical_verdicts(next_guard, next_model, next_processor, shaped_images, tmp_path):
    path = next_guard.save_pretrained(tmp_path / "g")
    loaded = SafetyGuard.from_pretrained(path, model=next_model, processor=next_processor)
    assert loaded.config == next_guard.config
    for a, b in zip(next_guard.classify_batch(shaped_images, PROMPTS), loaded.classify_batch(shaped_images, PROMPTS)):
        assert a.model_dump(exclude={"latency_ms"}) == b.model_dump(exclude={"latency_ms"})


def test_guards_do_not_cross_between_llava_and_next(
    next_guard, next_model, next_processor, guard, tiny_model, tiny_processor, tmp_path
):
    next_path = next_guard.save_pretrained(tmp_path / "next")
    llava_path = guard.save_pretrained(tmp_path / "llava")
    with pytest.raises(CheckpointMismatchError, match="family"):
        SafetyGuard.from_pretrained(llava_path, model=next_model, processor=next_processor)
    with pytest.raises(CheckpointMismatchError, match="family"):
        SafetyGuard.from_pretrained(next_path, model=tiny_model, processor=tiny_processor)


def test_allow_without_llm_tokens_is_token_for_token_plain_generate(next_model, next_processor, shaped_images):
    guard = guard_for(next_model, next_processor, inject=False, level=0)
    for image in shaped_images:
        with spy_generate(next_model) as outputs:
            result = guard.generate(image, QUESTION, **GREEDY)
        expected = plain_generate(next_model, next_processor, [image], [user_turn(QUESTION)], **GREEDY)
        assert (result.action, result.generated, len(expected)) == ("allow", True, 6)
        assert outputs[0][0, -len(expected) :].tolist() == expected
        assert result.completion_tokens == len(expected)
        assert result.text == next_processor.decode(expected, skip_special_tokens=True)


def test_batched_generation_with_safety_tokens_runs_the_tower_once(next_model, next_processor, shaped_images):
    guard = guard_for(next_model, next_processor, inject=True, level=0)
    with count_calls(next_model.model.vision_tower) as calls:
        results = guard.generate_batch(shaped_images, PROMPTS, max_new_tokens=3)
    assert calls == [1]
    assert [r.generated for r in results] == [True, True, True]
    assert all(r.completion_tokens > 0 for r in results)


def test_stream_with_a_hint_matches_generate(next_model, next_processor, shaped_images):
    guard = guard_for(next_model, next_processor, level=1)
    stream = guard.stream(shaped_images[1], QUESTION, max_new_tokens=4, do_sample=False)
    assert stream.verdict.action == "hint"
    text = "".join(stream)
    assert text.strip() == guard.generate(shaped_images[1], QUESTION, max_new_tokens=4, do_sample=False).text.strip()
    assert stream.result.completion_tokens > 0
