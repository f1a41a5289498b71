"""Response checking: ``classify_response`` judges an answer with the guard's own modules, no decode."""

import asyncio

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from psaguard import (
    CheckpointError,
    GuardPolicy,
    HeadConfig,
    InvalidPromptError,
    ResponseHeadMissingError,
    ResponsePolicy,
    ResponseRule,
    ResponseVerdict,
    SafetyGuard,
    SafetyGuardConfig,
    TypeRule,
)
from psaguard.responses.policy import decide_response, risk_source
from psaguard.taxonomy import DEFAULT_TAXONOMY

PROMPT = "what is in this image ?"
HARMFUL = "first mix the bleach with the acid then breathe"
HARMLESS = "a red circle on a white background"


def response_config(**policy) -> SafetyGuardConfig:
    return SafetyGuardConfig(head=HeadConfig(response_head=True), policy=GuardPolicy(**policy))


@pytest.fixture
def response_guard(tiny_model, tiny_processor):
    torch.manual_seed(0)
    return SafetyGuard.attach(tiny_model, tiny_processor, response_config())


def train_response_head(guard: SafetyGuard, image, steps: int = 60) -> None:
    """A few steps: HARMFUL -> level 3 / first risk type, HARMLESS -> level 0 / safe type (same request)."""
    backbone = guard.backbone
    with torch.no_grad():
        features = backbone.encode_images(**backbone.preprocess(guard.processor, [image, image]))
    taxonomy = guard.config.taxonomy
    risky = next(t.id for t in taxonomy.types if t.id != taxonomy.safe_type_id)
    levels = torch.tensor([3, 0])
    types = torch.tensor([risky, taxonomy.safe_type_id])
    optimizer = torch.optim.Adam(guard.modules.response_head.parameters(), lr=1e-2)
    guard.modules.train()
    for _ in range(steps):
        logits = guard.response_head_logits(features, [PROMPT, PROMPT], [HARMFUL, HARMLESS])
        loss = F.cross_entropy(logits.level.float(), levels) + F.cross_entropy(logits.type.float(), types)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    guard.modules.eval()


def test_a_guard_without_a_response_head_says_it_needs_retraining(guard, images, tmp_path, tiny_model, tiny_processor):
    with pytest.raises(ResponseHeadMissingError, match="retrain"):
        guard.classify_response(images[0], PROMPT, HARMLESS)
    # A guard saved before response heads existed (no key in its config) loads and says the same.
    loaded = SafetyGuard.from_pretrained(guard.save_pretrained(tmp_path / "old"), tiny_model, tiny_processor)
    assert loaded.modules.response_head is None
    with pytest.raises(ResponseHeadMissingError):
        loaded.classify_response_batch([images[0]], [PROMPT], [HARMLESS])


def test_classify_response_is_typed_and_reads_the_answer(response_guard, images):
    train_response_head(response_guard, images[0])
    bad = response_guard.classify_response(images[0], PROMPT, HARMFUL)
    good = response_guard.classify_response(images[0], PROMPT, HARMLESS)
    assert isinstance(bad, ResponseVerdict)
    assert bad.harmful and bad.action == "replace" and bad.flagged
    assert bad.replacement and bad.type.code != DEFAULT_TAXONOMY.safe_type
    assert bad.harm_prob > 0.5 > good.harm_prob
    assert not good.harmful and good.action == "allow" and good.replacement is None and good.risk_source is None
    assert bad.request is not None and bad.request.level_probs  # the request side, from the same vision pass
    assert sum(bad.level_probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert '"harmful":true' in bad.model_dump_json()


def test_batch_and_async_equal_one_by_one(response_guard, images):
    responses = [HARMFUL, HARMLESS, ""]
    batch = response_guard.classify_response_batch(images, [PROMPT] * 3, responses)
    single = [response_guard.classify_response(i, PROMPT, r) for i, r in zip(images, responses)]
    together = asyncio.run(response_guard.aclassify_response_batch(images, [PROMPT] * 3, responses))
    one = asyncio.run(response_guard.aclassify_response(images[0], PROMPT, HARMFUL))
    for got in (batch, together, [one, *single[1:]]):
        for want, have in zip(single, got, strict=True):
            assert have.action == want.action and have.rule == want.rule
            assert have.level_probs == pytest.approx(want.level_probs, abs=1e-5)


def test_risk_source_says_which_part_carries_the_risk(response_guard, images):
    train_response_head(response_guard, images[0])
    # The request side switched off for every type: the request is not flagged, so the answer carries the risk.
    quiet = GuardPolicy(default_rule=TypeRule(enabled=False))
    verdict = response_guard.with_policy(quiet).classify_response(images[0], PROMPT, HARMFUL)
    assert verdict.harmful and verdict.risk_source == "response" and not verdict.request.flagged
    # The request side flagging everything (threshold reached by any level-1 tail): image or request.
    eager = GuardPolicy(default_rule=TypeRule(threshold=1e-9))
    verdict = response_guard.with_policy(eager).classify_response(images[0], PROMPT, HARMFUL)
    assert verdict.risk_source in ("image", "request")


def test_risk_source_rule():
    from psaguard.policy import fixed_verdict

    policy = GuardPolicy()
    flagged = fixed_verdict("refuse", "x", policy)
    calm = fixed_verdict("allow", "x", policy)
    assert risk_source(False, flagged, flagged) is None
    assert risk_source(True, flagged, flagged) == "image"
    assert risk_source(True, calm, flagged) == "request"
    assert risk_source(True, calm, calm) == "response"


def test_response_policy_thresholds_per_type_actions_and_replacement():
    taxonomy = DEFAULT_TAXONOMY
    risky = next(t for t in taxonomy.types if t.id != taxonomy.safe_type_id)
    type_probs = [0.0] * taxonomy.num_types
    type_probs[risky.id] = 1.0
    level_probs = [0.4, 0.0, 0.6, 0.0]
    default = decide_response(level_probs, type_probs, ResponsePolicy(), taxonomy)
    assert default.harmful and default.action == "replace" and default.level.id == 2
    assert risky.concept in default.replacement
    assert default.harm_prob == pytest.approx(0.6)
    strict = ResponsePolicy(types={risky.code: ResponseRule(threshold=0.7)})
    assert decide_response(level_probs, type_probs, strict, taxonomy).action == "allow"
    blocking = ResponsePolicy(level_actions={1: "replace", 2: "block", 3: "block"}, replacement="no: {concept}")
    verdict = decide_response(level_probs, type_probs, blocking, taxonomy)
    assert verdict.action == "block" and verdict.replacement is None
    custom = ResponsePolicy(replacement="Stopped ({concept}).")
    assert decide_response(level_probs, type_probs, custom, taxonomy).replacement == f"Stopped ({risky.concept})."
    off = ResponsePolicy(types={risky.code: ResponseRule(enabled=False)})
    assert not decide_response(level_probs, type_probs, off, taxonomy).harmful


@pytest.mark.parametrize(
    "bad",
    [
        {"level_actions": {1: "replace", 7: "replace"}},
        {"level_actions": {0: "replace", 1: "replace", 2: "replace", 3: "replace"}},
        {"types": {"nonsense": {}}},
        {"replacement": "{concept.__class__}"},
        {"interval": 0},
        {"window": -1},
    ],
)
def test_bad_response_policies_are_refused(bad):
    with pytest.raises(ValueError):
        SafetyGuardConfig(policy=GuardPolicy(response=ResponsePolicy(**bad)))


def test_bad_inputs_fail_closed_or_follow_on_error(response_guard, images):
    with pytest.raises(InvalidPromptError):
        response_guard.classify_response(images[0], PROMPT, 42)
    with pytest.raises(InvalidPromptError):
        response_guard.classify_response_batch(images[:2], [PROMPT] * 2, [HARMLESS])
    with pytest.raises(InvalidPromptError):
        response_guard.classify_response_batch(images[:1], [PROMPT], HARMLESS)
    refusing = response_guard.with_policy(GuardPolicy(on_error="refuse"))
    verdicts = refusing.classify_response_batch([b"not an image", images[0]], [PROMPT] * 2, [HARMLESS] * 2)
    assert verdicts[0].action == "replace" and verdicts[0].error and verdicts[0].replacement
    assert verdicts[1].error is None


def test_save_load_keeps_the_response_head_under_the_checksum(
    response_guard, images, tiny_model, tiny_processor, tmp_path
):
    train_response_head(response_guard, images[0], steps=5)
    path = response_guard.save_pretrained(tmp_path / "guard")
    loaded = SafetyGuard.from_pretrained(path, tiny_model, tiny_processor)
    want = response_guard.classify_response(images[0], PROMPT, HARMFUL)
    got = loaded.classify_response(images[0], PROMPT, HARMFUL)
    assert got.level_probs == pytest.approx(want.level_probs, abs=1e-6)
    weights = path / "psaguard_model.safetensors"
    tensors = load_file(weights)
    assert any(name.startswith("response_head.") for name in tensors)
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata()
    tensors["response_head.level_head.bias"] = tensors["response_head.level_head.bias"] + 1.0
    save_file(tensors, str(weights), metadata=metadata)
    with pytest.raises(CheckpointError, match="checksum"):
        SafetyGuard.from_pretrained(path, tiny_model, tiny_processor)


def test_classifier_only_guard_judges_answers_like_the_full_one(response_guard, images, tiny_dir, tmp_path):
    train_response_head(response_guard, images[0], steps=5)
    path = response_guard.save_pretrained(tmp_path / "guard")
    light = SafetyGuard.from_pretrained_classifier(path, tiny_dir)
    want = response_guard.classify_response(images[0], PROMPT, HARMFUL)
    got = light.classify_response(images[0], PROMPT, HARMFUL)
    assert got.action == want.action
    assert got.level_probs == pytest.approx(want.level_probs, abs=1e-5)
