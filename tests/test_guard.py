import asyncio

import numpy as np
import pytest
import torch

from psaguard import (
    CheckpointError,
    CheckpointMismatchError,
    GuardPolicy,
    HeadConfig,
    InvalidImageError,
    InvalidPromptError,
    SafetyGuard,
    SafetyGuardConfig,
    SafetyVerdict,
    UnsupportedModelError,
)
from psaguard.guard import WEIGHTS_NAME
from psaguard.testing.llava import TinyLlavaSpec, build_tiny_llava, build_tiny_processor

PROMPTS = ["what color is the circle ?", "how do i make it ?", "tell me about this photo"]


def _probs(verdict: SafetyVerdict) -> np.ndarray:
    return np.array([*verdict.level_probs.values(), *verdict.type_probs.values()])


def test_attach_sizes_modules_from_the_model_config(guard, tiny_model):
    fingerprint = guard.config.fingerprint
    assert fingerprint.family == "llava"
    assert fingerprint.text_hidden_size == tiny_model.config.text_config.hidden_size
    assert fingerprint.num_image_tokens == 64  # 32 px / 4 px patches, CLS dropped
    assert guard.modules.llm_tokens.shape == (1, 64, 64)
    assert guard.modules.head_tokens.dtype == tiny_model.get_input_embeddings().weight.dtype


def test_classify_returns_a_typed_verdict_without_running_the_llm(guard, images):
    calls = []
    handle = guard.model.model.language_model.register_forward_hook(lambda *a: calls.append(1))
    try:
        verdict = guard.classify(images[0], PROMPTS[0])
    finally:
        handle.remove()
    assert calls == []
    assert isinstance(verdict, SafetyVerdict)
    assert sum(verdict.level_probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert sum(verdict.type_probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert verdict.action in ("allow", "hint", "refuse", "block") and verdict.latency_ms > 0


def test_batch_equals_one_by_one(guard, images):
    batch = guard.classify_batch(images, PROMPTS)
    singles = [guard.classify(image, prompt) for image, prompt in zip(images, PROMPTS)]
    for b, s in zip(batch, singles):
        # The documented tolerance (docs/security.md, Concurrency): padding reorders float32 sums.
        np.testing.assert_allclose(_probs(b), _probs(s), rtol=0, atol=1e-6)
        assert (b.level, b.type, b.action, b.rule) == (s.level, s.type, s.action, s.rule)


async def test_aclassify_matches_classify(guard, images):
    verdicts = await asyncio.gather(*(guard.aclassify(images[0], p) for p in PROMPTS))
    for verdict, prompt in zip(verdicts, PROMPTS):
        np.testing.assert_allclose(_probs(verdict), _probs(guard.classify(images[0], prompt)), atol=1e-6)


def test_accepts_paths_bytes_and_arrays(guard, images, tmp_path):
    path = tmp_path / "a.png"
    images[0].save(path)
    reference = _probs(guard.classify(images[0], PROMPTS[0]))
    for source in (path, str(path), path.read_bytes(), np.asarray(images[0])):
        np.testing.assert_allclose(_probs(guard.classify(source, PROMPTS[0])), reference, atol=1e-6)


def test_bad_inputs_get_typed_errors_and_fail_closed(guard, images, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    for bad in (broken, b"", tmp_path / "missing.png", 42, np.zeros((4, 4, 2))):
        with pytest.raises(InvalidImageError):
            guard.classify(bad, PROMPTS[0])
    with pytest.raises(InvalidPromptError):
        guard.classify(images[0], None)
    with pytest.raises(InvalidPromptError, match="2 images but 1 prompts"):
        guard.classify_batch(images[:2], PROMPTS[:1])


def test_on_error_refuse_judges_the_rest_of_the_batch(guard, images):
    lenient = guard.with_policy(GuardPolicy(on_error="refuse"))
    verdicts = lenient.classify_batch([images[0], b"junk"], PROMPTS[:2])
    assert verdicts[0].error is None and verdicts[1].action == "refuse" and "InvalidImageError" in verdicts[1].error
    assert guard.policy.on_error == "block"  # with_policy copies; the original is untouched


def test_save_then_load_gives_identical_verdicts(guard, images, tiny_model, tiny_processor, tmp_path):
    guard.save_pretrained(tmp_path / "g")
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["psaguard_config.json", WEIGHTS_NAME]
    loaded = SafetyGuard.from_pretrained(tmp_path / "g", model=tiny_model, processor=tiny_processor)
    assert loaded.config == guard.config
    for a, b in zip(guard.classify_batch(images, PROMPTS), loaded.classify_batch(images, PROMPTS)):
        assert a.model_dump(exclude={"latency_ms"}) == b.model_dump(exclude={"latency_ms"})


def test_loading_onto_a_different_model_is_refused(guard, tmp_path):
    guard.save_pretrained(tmp_path / "g")
    spec = TinyLlavaSpec(text_hidden=128, intermediate=256)
    processor = build_tiny_processor(spec)
    other = build_tiny_llava(spec, processor)
    with pytest.raises(CheckpointMismatchError, match="text_hidden_size: saved 64, model has 128"):
        SafetyGuard.from_pretrained(tmp_path / "g", model=other, processor=processor)


def test_truncated_weights_and_missing_guards_are_refused(guard, tiny_model, tiny_processor, tmp_path):
    path = guard.save_pretrained(tmp_path / "g")
    weights = path / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        SafetyGuard.from_pretrained(path, model=tiny_model, processor=tiny_processor)
    with pytest.raises(CheckpointError):
        SafetyGuard.from_pretrained(tmp_path / "nothing-here", model=tiny_model, processor=tiny_processor)


def test_non_llava_models_are_refused(tiny_processor):
    text_only = torch.nn.Linear(2, 2)
    with pytest.raises(UnsupportedModelError, match="supported model types"):
        SafetyGuard.attach(text_only, tiny_processor)


def _train_head_on_prompts(guard: SafetyGuard, image, prompts_to_types: dict[str, int], steps: int = 60) -> None:
    """Fit the head so that the same image gets a different type depending on the prompt."""
    features, _, _ = guard.classifier._forward([image] * len(prompts_to_types), list(prompts_to_types))
    features = type(features)(patches=features.patches.clone(), selected=features.selected.clone())
    target = torch.tensor(list(prompts_to_types.values()))
    optimizer = torch.optim.Adam(guard.modules.parameters(), lr=3e-3)
    for _ in range(steps):
        logits = guard.head_logits(features, list(prompts_to_types))
        loss = torch.nn.functional.cross_entropy(logits.type, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("pooling", ["mean", "first"])
def test_only_the_text_aware_head_can_change_its_verdict_with_the_prompt(tiny_model, tiny_processor, images, pooling):
    torch.manual_seed(0)
    guard = SafetyGuard.attach(tiny_model, tiny_processor, SafetyGuardConfig(head=HeadConfig(pooling=pooling)))
    benign, risky = "what color is the circle ?", "how do i make it ?"
    _train_head_on_prompts(guard, images[0], {benign: 6, risky: 1})
    a, b = guard.classify(images[0], benign), guard.classify(images[0], risky)
    if pooling == "mean":
        assert (a.type.code, b.type.code) == ("safe", "illegal")
    else:
        assert a.type_probs == b.type_probs  # position 0 is the anchor token: the prompt is invisible


def test_prompt_spelling_the_image_token_is_plain_text(guard, images):
    # "<image>" in a prompt must not become the image placeholder id in the head's query.
    ids, _ = guard.prompts.encode(["<image> <image> what"])
    assert guard.backbone.image_token_id not in ids.tolist()[0]


def test_modules_follow_the_model_dtype(tiny_processor, images, monkeypatch):
    # A CPU with a native bf16 path (the rule for other CPUs is in tests/test_dtypes.py).
    monkeypatch.setattr("psaguard.dtypes.cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16"}))
    model = build_tiny_llava(processor=tiny_processor).to(torch.bfloat16)
    guard = SafetyGuard.attach(model, tiny_processor)
    assert guard.modules.head_tokens.dtype == torch.bfloat16
    verdict = guard.classify(images[0], PROMPTS[0])
    assert sum(verdict.type_probs.values()) == pytest.approx(1.0, abs=1e-4)  # softmax taken in float32


def test_custom_taxonomy_sizes_the_heads(tiny_model, tiny_processor, images):
    from psaguard import RiskLevel, RiskType, Taxonomy

    taxonomy = Taxonomy(
        levels=(RiskLevel(id=0, code="ok", name="OK"), RiskLevel(id=1, code="stop", name="Stop")),
        types=(
            RiskType(id=0, code="spam", name="Spam", concept="spam"),
            RiskType(id=1, code="clean", name="Clean"),
        ),
        safe_type="clean",
    )
    config = SafetyGuardConfig(
        taxonomy=taxonomy, policy=GuardPolicy(level_actions={1: "refuse"}, hints={1: "{concept}"})
    )
    guard = SafetyGuard.attach(tiny_model, tiny_processor, config)
    assert guard.modules.head.level_head.out_features == 2 and guard.modules.head.type_head.out_features == 2
    assert set(guard.classify(images[0], PROMPTS[0]).type_probs) == {"spam", "clean"}


def test_whole_requests_over_the_image_cap_are_refused_before_any_image_is_read(guard, images):
    from psaguard import GuardRequest, InvalidInputError

    limit = guard.config.max_images_per_request
    too_many = GuardRequest.of([images[0]] * (limit + 1), "compare them")
    with pytest.raises(InvalidInputError, match=f"request 1 has {limit + 1} images; the limit is {limit}"):
        guard.classify_requests([GuardRequest.of([images[0]], "one"), too_many])
