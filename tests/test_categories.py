"""Custom risk categories: fitted from a few examples, judged in the head's pass, saved with the guard."""

from __future__ import annotations

import json

import pytest
import torch
from category_helpers import BENIGN, SCAM, negatives, scam_examples, scam_request, variant
from safetensors.torch import load_file, save_file

from psaguard import SafetyGuard
from psaguard.categories import (
    WEIGHT_KEYS,
    CategoryBank,
    category_features,
    category_width,
    fit_category,
    new_category,
)
from psaguard.checkpoints.serialization import read_metadata
from psaguard.config import CONFIG_NAME
from psaguard.errors import CategoryError, CheckpointError, ConfigError, InvalidImageError
from psaguard.guard import WEIGHTS_NAME
from psaguard.policy import GuardPolicy, decide


@pytest.fixture
def scam_guard(guard, images):
    guard.add_category("scam", scam_examples(images), level=3, name="Scam", negatives=negatives(images))
    return guard


# ---------------------------------------------------------------------- the API and the decision
def test_a_firing_category_decides_with_its_code_level_and_the_policy_action(scam_guard, images):
    verdict = scam_guard.classify(*scam_request(images))
    assert verdict.custom_scores["scam"] >= 0.5
    assert verdict.rule == "category:scam/level:reject"
    assert (verdict.type.code, verdict.type.name, verdict.level.id) == ("scam", "Scam", 3)
    assert verdict.type.id == scam_guard.config.taxonomy.num_types  # ids continue after the taxonomy's types
    assert verdict.action == "refuse" and "Scam" in verdict.refusal


def test_a_benign_request_gets_a_score_but_the_head_decides(scam_guard, images):
    verdict = scam_guard.classify(variant(images[1], 7), "describe this picture")
    assert set(verdict.custom_scores) == {"scam"} and verdict.custom_scores["scam"] < 0.5
    assert not verdict.rule.startswith("category:")


def test_the_action_override_applies(guard, images):
    guard.add_category("scam", scam_examples(images), level=1, negatives=negatives(images), action="block")
    verdict = guard.classify(*scam_request(images))
    assert (verdict.action, verdict.rule, verdict.refusal is not None) == ("block", "category:scam/level:careful", True)


def test_categories_are_judged_in_the_same_vision_pass(scam_guard, images, monkeypatch):
    calls = []
    encode = scam_guard.backbone.encode_images
    monkeypatch.setattr(scam_guard.backbone, "encode_images", lambda **kw: calls.append(1) or encode(**kw))
    requests = [scam_request(images)[0], *images[1:]]
    verdicts = scam_guard.classify_batch(requests, [f"{SCAM} now", *BENIGN[:2]])
    assert len(calls) == 1
    # the score is the bank's probability of the features of the head's own pass for the same request
    pixels = scam_guard.backbone.preprocess(scam_guard.processor, requests[:1])
    features = scam_guard.backbone.encode_images(**pixels)
    with torch.inference_mode():
        logits = scam_guard.head_logits(features, [f"{SCAM} now"])
    inputs = category_features(logits.pooled, logits.prompt, features.patches)
    expected = scam_guard.classifier.bank.probabilities(inputs)[0, 0].item()
    assert verdicts[0].custom_scores["scam"] == pytest.approx(expected, abs=1e-5)


def test_batch_scores_match_single_requests(scam_guard, images):
    prompts = [f"{SCAM} now", *BENIGN[:2]]
    requests = [scam_request(images)[0], *images[1:]]
    batch = scam_guard.classify_batch(requests, prompts)
    for image, prompt, verdict in zip(requests, prompts, batch):
        assert scam_guard.classify(image, prompt).custom_scores["scam"] == pytest.approx(
            verdict.custom_scores["scam"], abs=1e-5
        )


def test_remove_category_restores_the_head_verdict(guard, images):
    before = guard.classify(*scam_request(images))
    guard.add_category("scam", scam_examples(images), level=3, negatives=negatives(images))
    removed = guard.remove_category("scam")
    after = guard.classify(*scam_request(images))
    assert removed.code == "scam" and guard.categories == () and after.custom_scores == {}
    assert after.model_dump(exclude={"latency_ms"}) == before.model_dump(exclude={"latency_ms"})
    with pytest.raises(CategoryError, match="no custom category"):
        guard.remove_category("scam")


def test_with_policy_keeps_the_categories(scam_guard, images):
    strict = scam_guard.with_policy(GuardPolicy(level_actions={1: "hint", 2: "hint", 3: "block"}))
    assert [c.code for c in strict.categories] == ["scam"]
    assert strict.classify(*scam_request(images)).action == "block"


# ---------------------------------------------------------------------- the decision, on probabilities alone
LEVELS_SAFE, TYPES_SAFE = [0.9, 0.05, 0.03, 0.02], [0.0] * 6 + [1.0]
LEVELS_REJECT, TYPES_PRIVACY = [0.0, 0.0, 0.1, 0.9], [0.0] * 4 + [1.0, 0.0, 0.0]


def _category(code: str, level: int, action=None):
    return new_category(code, level=level, action=action, name=code.title())


def test_no_category_fires_below_one_half():
    cats = [_category("scam", 3)]
    verdict = decide(LEVELS_SAFE, TYPES_SAFE, GuardPolicy(), categories=cats, custom_probs=[0.49])
    assert (verdict.action, verdict.rule, verdict.custom_scores) == ("allow", "safe_type", {"scam": 0.49})


def test_the_most_severe_firing_category_decides():
    cats = [_category("spam", 1), _category("scam", 2, "refuse"), _category("brand", 2)]
    verdict = decide(LEVELS_SAFE, TYPES_SAFE, GuardPolicy(), categories=cats, custom_probs=[0.99, 0.6, 0.9])
    assert (verdict.rule, verdict.action, verdict.type.code, verdict.type.id) == (
        "category:scam/level:caution",
        "refuse",
        "scam",
        8,
    )
    hinted = decide(LEVELS_SAFE, TYPES_SAFE, GuardPolicy(), categories=cats[:1], custom_probs=[0.99])
    assert hinted.action == "hint" and "Spam" in hinted.hint  # the policy's level-1 hint for the category's concept


def test_a_category_never_weakens_the_heads_verdict():
    cats = [_category("scam", 1)]
    verdict = decide(LEVELS_REJECT, TYPES_PRIVACY, GuardPolicy(), categories=cats, custom_probs=[0.99])
    assert (verdict.rule, verdict.action, verdict.custom_scores) == (
        "type:privacy/level:reject",
        "refuse",
        {"scam": 0.99},
    )


def test_a_category_at_the_heads_severity_takes_the_verdict():
    verdict = decide(LEVELS_REJECT, TYPES_PRIVACY, GuardPolicy(), categories=[_category("scam", 3)], custom_probs=[0.7])
    assert verdict.rule == "category:scam/level:reject" and verdict.level_probs == dict(
        zip(("safe", "careful", "caution", "reject"), LEVELS_REJECT)
    )


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("code", "level", "match"),
    [
        ("privacy", 3, "risk types of the taxonomy"),
        ("scam", 4, "highest level is 3"),
        ("scam", 0, "level"),
        ("Bad Code", 2, "code"),
    ],
)
def test_invalid_categories_are_typed_errors(guard, images, code, level, match):
    with pytest.raises(CategoryError, match=match):
        guard.add_category(code, scam_examples(images), level=level)
    assert guard.categories == ()


def test_a_repeated_code_is_refused(scam_guard, images):
    with pytest.raises(CategoryError, match="repeated"):
        scam_guard.add_category("scam", scam_examples(images), level=2)


def test_zero_examples_are_refused(guard):
    with pytest.raises(CategoryError, match="at least one"):
        guard.add_category("scam", [], level=2)


def test_non_finite_features_are_refused(guard, images, monkeypatch):
    nan = torch.full((2, guard.classifier.bank.dim), float("nan"))
    monkeypatch.setattr(guard.classifier, "category_features", lambda *a, **k: nan)
    with pytest.raises(CategoryError, match="non-finite"):
        guard.add_category("scam", scam_examples(images, 2), level=2)


def test_bad_example_images_are_input_errors(guard, images):
    with pytest.raises(InvalidImageError, match="example 1"):
        guard.add_category("scam", [(images[0], SCAM), (b"not an image", SCAM)], level=2)
    with pytest.raises(CategoryError, match="pairs"):
        guard.add_category("scam", [images[0]], level=2)  # type: ignore[list-item]


def test_logistic_needs_negatives(guard, images):
    with pytest.raises(CategoryError, match="needs negatives"):
        guard.add_category("scam", scam_examples(images), level=2, method="logistic")


# ---------------------------------------------------------------------- fitting, on features alone
def _clusters(seed: int, k: int, dim: int = 16):
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(dim, generator=g)
    pos = centre + 0.3 * torch.randn(k, dim, generator=g)
    neg = -centre + 0.3 * torch.randn(8, dim, generator=g)
    return pos, neg


@pytest.mark.parametrize("method", ["prototype", "logistic"])
def test_both_methods_separate_two_clusters(method):
    pos, neg = _clusters(0, 6)
    category, weight, bias = fit_category("scam", pos, neg, level=2, method=method)
    bank = CategoryBank.empty(16).with_category(category, weight, bias)
    assert (bank.probabilities(pos)[:, 0] > 0.5).all() and (bank.probabilities(neg)[:, 0] < 0.5).all()
    assert (category.examples, category.negatives, category.method) == (6, 8, method)


def test_a_single_example_without_negatives_fires_near_it_only():
    pos, neg = _clusters(1, 1)
    category, weight, bias = fit_category("scam", pos, level=2)
    bank = CategoryBank.empty(16).with_category(category, weight, bias)
    assert bank.probabilities(pos)[0, 0] > 0.9 and (bank.probabilities(neg)[:, 0] < 0.5).all()
    assert category.threshold == pytest.approx(0.9)


@pytest.mark.parametrize("method", ["prototype", "logistic"])
def test_examples_that_do_not_beat_the_negatives_are_refused(method):
    pos, _ = _clusters(2, 4)
    with pytest.raises(CategoryError, match="told apart"):  # a logistic fit of 0.5 everywhere would fire on all
        fit_category("scam", pos, pos.clone(), level=2, method=method)


def test_auto_fits_a_logistic_regression_with_negatives_and_a_prototype_without():
    pos, neg = _clusters(3, 4)
    assert fit_category("scam", pos, neg, level=2)[0].method == "logistic"
    assert fit_category("scam", pos, level=2)[0].method == "prototype"


# ---------------------------------------------------------------------- persistence
def test_categories_survive_save_and_load(scam_guard, images, tiny_model, tiny_processor, tmp_path):
    scam_guard.save_pretrained(tmp_path)
    loaded = SafetyGuard.from_pretrained(tmp_path, tiny_model, tiny_processor)
    assert loaded.categories == scam_guard.categories
    for image, prompt in (scam_request(images), (images[1], BENIGN[0])):
        a, b = scam_guard.classify(image, prompt), loaded.classify(image, prompt)
        assert a.custom_scores["scam"] == pytest.approx(b.custom_scores["scam"], abs=1e-6) and a.rule == b.rule


def test_a_guard_without_categories_saves_no_bank(guard, tmp_path):
    guard.save_pretrained(tmp_path)
    assert not set(WEIGHT_KEYS) & set(load_file(tmp_path / WEIGHTS_NAME))


def test_an_edited_category_in_the_config_is_refused(scam_guard, tiny_model, tiny_processor, tmp_path):
    scam_guard.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["categories"][0]["level"] = 1  # weakened from reject
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    with pytest.raises(CheckpointError, match="changed after the guard was saved"):
        SafetyGuard.from_pretrained(tmp_path, tiny_model, tiny_processor)


def test_a_removed_category_with_an_accepted_edit_fails_the_shape_check(
    scam_guard, tiny_model, tiny_processor, tmp_path
):
    scam_guard.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["categories"] = []
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    with pytest.raises(CheckpointError, match="unexpected"):
        SafetyGuard.from_pretrained(tmp_path, tiny_model, tiny_processor, accept_edited_config=True)


def test_tampered_category_weights_are_refused(scam_guard, tiny_model, tiny_processor, tmp_path):
    scam_guard.save_pretrained(tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    metadata, tensors = read_metadata(weights), load_file(weights)
    tensors["categories.bias"] = tensors["categories.bias"] - 100.0  # the category would never fire
    save_file(tensors, str(weights), metadata=metadata)
    with pytest.raises(CheckpointError, match="checksum"):
        SafetyGuard.from_pretrained(tmp_path, tiny_model, tiny_processor)


def test_categories_saved_on_the_pooled_feature_alone_are_refused_with_a_clear_error(
    scam_guard, tiny_model, tiny_processor, tmp_path
):
    # files of the first custom-category format (no 'features' field: the head's pooled feature alone)
    scam_guard.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    del config["categories"][0]["features"]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    with pytest.raises(ConfigError, match=r"\['scam'\] were fitted on other features \(\['pooled'\]\).*remove them"):
        SafetyGuard.from_pretrained(tmp_path, tiny_model, tiny_processor, accept_edited_config=True)


# ---------------------------------------------------------------------- what the categories read
def test_category_features_put_the_pooled_image_and_prompt_parts_side_by_side_each_normalised():
    g = torch.Generator().manual_seed(0)
    pooled, prompt, patches = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g), torch.randn(3, 4, 5)
    z = category_features(pooled, prompt, patches)
    assert z.shape == (3, category_width(8, 5)) == (3, 21)
    parts = z.split([8, 5, 8], dim=-1)
    for part, source in zip(parts, (pooled, patches.mean(1), prompt)):
        assert torch.allclose(part * 3**0.5, torch.nn.functional.normalize(source, dim=-1), atol=1e-6)
    assert torch.allclose(z.norm(dim=-1), torch.ones(3), atol=1e-6)


def test_a_category_told_by_its_prompt_alone_is_learnt(guard, images):
    # same images for examples and negatives: only the prompt's part of the features tells them apart
    shown = [variant(images[1 + i % 2], i) for i in range(8)]
    examples = [(image, f"{SCAM} number {i}") for i, image in enumerate(shown[:4])]
    benign = [(image, BENIGN[i % len(BENIGN)]) for i, image in enumerate(shown[4:])]
    guard.add_category("scam", examples, level=2, negatives=benign)
    scam = guard.classify(variant(images[2], 50), f"{SCAM} today").custom_scores["scam"]
    plain = guard.classify(variant(images[2], 50), BENIGN[0]).custom_scores["scam"]
    assert scam > 0.5 > plain


# ---------------------------------------------------------------------- the other paths that judge
def test_guarded_generation_refuses_with_the_categorys_refusal(scam_guard, images):
    result = scam_guard.generate(*scam_request(images), max_new_tokens=4)
    assert (result.action, result.generated, result.verdict.rule) == ("refuse", False, "category:scam/level:reject")
    assert result.text == result.verdict.refusal and "Scam" in result.text  # the concept defaults to the name


def test_judging_precomputed_features_scores_the_categories(scam_guard, images):
    image, prompt = scam_request(images)
    features = scam_guard.backbone.encode_images(**scam_guard.backbone.preprocess(scam_guard.processor, [image]))
    (verdict,) = scam_guard.classifier.judge(features, [prompt], start=0.0)
    assert verdict.rule == "category:scam/level:reject"
    assert verdict.custom_scores["scam"] == pytest.approx(
        scam_guard.classify(image, prompt).custom_scores["scam"], abs=1e-5
    )
