"""Classifier-only guards: same verdicts as on the full model, a fraction of its weights, no generation."""

import asyncio
import json

import pytest
import torch
from generation_helpers import count_calls
from safetensors.torch import save_file
from torch.nn import functional as F

from psaguard import (
    CheckpointError,
    CheckpointMismatchError,
    GenerationUnavailableError,
    GuardPolicy,
    ResponseHeadMissingError,
    SafetyGuard,
    UnsupportedModelError,
)
from psaguard.backbones import EncoderOnlyLlavaBackbone, EncoderOnlyLlavaNextBackbone, is_classifier_only
from psaguard.testing.llava import TinyLlavaSpec, save_tiny_llava

PROMPTS = ["what is in this image ?", "describe the picture", "how many circle are there ?"]


def assert_same_verdicts(expected, actual):
    for want, got in zip(expected, actual, strict=True):
        assert got.action == want.action and got.rule == want.rule
        assert got.level_probs == pytest.approx(want.level_probs, abs=1e-5)
        assert got.type_probs == pytest.approx(want.type_probs, abs=1e-5)


@pytest.fixture
def trained_guard(tiny_model, tiny_processor, images):
    """A guard whose modules took a few gradient steps on the full model (towards level 2 for every request)."""
    torch.manual_seed(0)
    guard = SafetyGuard.attach(tiny_model, tiny_processor)
    backbone = guard.backbone
    with torch.no_grad():
        features = backbone.encode_images(**backbone.preprocess(tiny_processor, images))
    optimizer = torch.optim.Adam(guard.modules.parameters(), lr=1e-2)
    guard.modules.train()
    for _ in range(5):
        logits = guard.head_logits(features, PROMPTS)
        loss = F.cross_entropy(logits.level.float(), torch.full((len(PROMPTS),), 2))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    guard.modules.eval()
    return guard


@pytest.fixture
def trained_dir(trained_guard, tmp_path):
    return trained_guard.save_pretrained(tmp_path / "guard")


def test_verdicts_equal_the_full_guards_for_single_batch_and_async_requests(
    trained_guard, trained_dir, tiny_dir, images
):
    classifier = SafetyGuard.from_pretrained_classifier(trained_dir, tiny_dir)
    assert isinstance(classifier.backbone, EncoderOnlyLlavaBackbone)
    full = trained_guard.classify_batch(images, PROMPTS)
    assert_same_verdicts(full, classifier.classify_batch(images, PROMPTS))
    assert_same_verdicts(full[:1], [classifier.classify(images[0], PROMPTS[0])])
    assert_same_verdicts(full[1:2], [asyncio.run(classifier.aclassify(images[1], PROMPTS[1]))])
    assert all(v.level.id == 2 for v in full)  # the few training steps took effect


def test_llava_next_verdicts_equal_the_full_guards(next_model, next_processor, next_dir, shaped_images, tmp_path):
    torch.manual_seed(0)
    full = SafetyGuard.attach(next_model, next_processor)
    classifier = SafetyGuard.from_pretrained_classifier(full.save_pretrained(tmp_path / "guard"), next_dir)
    assert isinstance(classifier.backbone, EncoderOnlyLlavaNextBackbone)
    assert classifier.config.fingerprint.family == "llava_next"
    assert_same_verdicts(full.classify_batch(shaped_images, PROMPTS), classifier.classify_batch(shaped_images, PROMPTS))


def test_only_the_vision_tower_projector_and_token_embeddings_are_loaded(trained_dir, tiny_dir, tiny_model):
    classifier = SafetyGuard.from_pretrained_classifier(trained_dir, tiny_dir)
    model = classifier.model
    assert is_classifier_only(model) and type(model) is type(tiny_model)
    parts = tiny_model.model
    kept = [parts.vision_tower, parts.multi_modal_projector, parts.language_model.embed_tokens]
    loaded = sum(p.numel() for p in model.parameters())
    assert loaded == sum(p.numel() for part in kept for p in part.parameters())
    assert loaded < sum(p.numel() for p in tiny_model.parameters())
    assert torch.equal(model.get_input_embeddings().weight, parts.language_model.embed_tokens.weight)
    assert not any(p.requires_grad for p in model.parameters())


def test_generation_methods_raise_a_typed_error(trained_dir, tiny_dir, images):
    classifier = SafetyGuard.from_pretrained_classifier(trained_dir, tiny_dir)
    calls = [
        lambda: classifier.generate(images[0], PROMPTS[0]),
        lambda: classifier.generate_batch(images[:2], PROMPTS[:2]),
        lambda: classifier.stream(images[0], PROMPTS[0]),
        lambda: classifier.astream(images[0], PROMPTS[0]),
        lambda: asyncio.run(classifier.agenerate(images[0], PROMPTS[0])),
        lambda: classifier.wrap(),
        lambda: classifier.model.generate(input_ids=torch.ones(1, 3, dtype=torch.long)),
        lambda: classifier.with_policy(GuardPolicy()).generate(images[0], PROMPTS[0]),
    ]
    with count_calls(classifier.model.model.vision_tower) as tower_calls:
        for call in calls:
            with pytest.raises(GenerationUnavailableError, match="classifier-only"):
                call()
    assert tower_calls == []  # refused before judging anything
    assert issubclass(GenerationUnavailableError, UnsupportedModelError)


def test_wrapping_a_full_model_gives_guarded_generation_again(
    trained_dir, tiny_dir, tiny_model, tiny_processor, images
):
    classifier = SafetyGuard.from_pretrained_classifier(trained_dir, tiny_dir)
    wrapped = classifier.wrap(tiny_model)
    assert wrapped.model is tiny_model
    inputs = tiny_processor(
        images=images[:1], text=["user : <image> what is in this image ? assistant :"], return_tensors="pt"
    )
    out = wrapped.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape[1] >= inputs["input_ids"].shape[1]


def test_a_guard_saved_classifier_only_loads_back_onto_the_full_model(
    trained_guard, trained_dir, tiny_dir, tiny_model, tiny_processor, images, tmp_path
):
    classifier = SafetyGuard.from_pretrained_classifier(trained_dir, tiny_dir)
    again = SafetyGuard.from_pretrained(classifier.save_pretrained(tmp_path / "again"), tiny_model, tiny_processor)
    assert_same_verdicts(trained_guard.classify_batch(images, PROMPTS), again.classify_batch(images, PROMPTS))


def test_a_guard_of_another_family_or_size_is_refused(next_model, next_processor, trained_dir, tiny_dir, tmp_path):
    torch.manual_seed(0)
    next_guard = SafetyGuard.attach(next_model, next_processor).save_pretrained(tmp_path / "next")
    with pytest.raises(CheckpointMismatchError, match="family"):
        SafetyGuard.from_pretrained_classifier(next_guard, tiny_dir)
    wide = save_tiny_llava(tmp_path / "wide", TinyLlavaSpec(vision_hidden=128))
    (wide / "model.safetensors").unlink()  # the check comes from the config, before any weight is read
    with pytest.raises(CheckpointMismatchError, match="vision_hidden_size"):
        SafetyGuard.from_pretrained_classifier(trained_dir, wide)


def test_a_non_llava_checkpoint_is_refused(trained_dir, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, vocab_size=128
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    with pytest.raises(UnsupportedModelError, match="'llama'"):
        SafetyGuard.from_pretrained_classifier(trained_dir, tmp_path / "llama")


def test_an_adapter_on_the_language_model_is_skipped_and_one_on_the_tower_refused(
    trained_guard, trained_dir, tiny_dir, images
):
    adapter = trained_dir / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    lora = torch.zeros(4, 64)
    llm = "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"
    save_file({llm: lora}, str(adapter / "adapter_model.safetensors"))
    classifier = SafetyGuard.from_pretrained_classifier(trained_dir, tiny_dir)
    assert_same_verdicts(trained_guard.classify_batch(images, PROMPTS), classifier.classify_batch(images, PROMPTS))

    tower = "base_model.model.model.vision_tower.encoder.layers.0.self_attn.q_proj.lora_A.weight"
    save_file({llm: lora, tower: lora.clone()}, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match="verdict reads"):
        SafetyGuard.from_pretrained_classifier(trained_dir, tiny_dir)


def test_a_missing_guard_fails_before_the_model_is_read(tmp_path):
    with pytest.raises(CheckpointError, match=r"psaguard_config\.json"):
        SafetyGuard.from_pretrained_classifier(tmp_path, tmp_path / "no-such-model")


def test_the_cli_classifies_with_only_the_encoder_and_prints_the_full_models_verdict(
    trained_dir, tiny_dir, images, tmp_path, capsys
):
    from psaguard.cli.main import main

    images[0].save(tmp_path / "x.png")
    args = ["classify", "--guard", str(trained_dir), "--model", str(tiny_dir), str(tmp_path / "x.png"), PROMPTS[0]]
    assert main(args) == 0
    full = json.loads(capsys.readouterr().out)
    assert main([*args[:5], "--classifier-only", *args[5:]]) == 0
    classifier = json.loads(capsys.readouterr().out)
    assert classifier["action"] == full["action"]
    assert classifier["level_probs"] == pytest.approx(full["level_probs"], abs=1e-5)


def test_a_classifier_only_guard_gates_a_hosted_model_in_langchain(trained_dir, tiny_dir, images):
    pytest.importorskip("langchain_core")
    from langchain_core.runnables import RunnableLambda

    from psaguard.adapters import guarded

    calls = []
    hosted = RunnableLambda(lambda request: calls.append(request) or "hosted answer")
    classifier = SafetyGuard.from_pretrained_classifier(trained_dir, tiny_dir)
    request = {"image": images[0], "prompt": PROMPTS[0]}
    lenient = classifier.with_policy(GuardPolicy(level_actions={1: "allow", 2: "allow", 3: "allow"}))
    with pytest.raises(ResponseHeadMissingError):  # it cannot judge answers: refused unless told to skip them
        guarded(hosted, lenient)
    assert guarded(hosted, lenient, check_answers=False).invoke(request) == "hosted answer"
    strict_policy = GuardPolicy(level_actions={1: "refuse", 2: "refuse", 3: "refuse"})
    strict = SafetyGuard.from_pretrained_classifier(trained_dir, tiny_dir, policy=strict_policy)
    assert strict.policy == strict_policy
    refusal = guarded(hosted, strict, check_answers=False).invoke(request)
    assert "hosted answer" not in str(refusal)
    assert len(calls) == 1


@pytest.mark.gpu
def test_a_classifier_only_guard_runs_on_cuda(trained_guard, trained_dir, tiny_dir, images):
    classifier = SafetyGuard.from_pretrained_classifier(trained_dir, tiny_dir, device="cuda")
    assert classifier.modules.head_tokens.device.type == "cuda"
    assert classifier.backbone.device.type == "cuda"
    # cuDNN convolutions (the patch embedding) may use TF32 on the GPU: compare loosely.
    for want, got in zip(trained_guard.classify_batch(images, PROMPTS), classifier.classify_batch(images, PROMPTS)):
        assert got.level_probs == pytest.approx(want.level_probs, abs=1e-3)
