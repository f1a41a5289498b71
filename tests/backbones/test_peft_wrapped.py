"""A model the user has already wrapped with PEFT: the adapter finds the parts inside, generation keeps the LoRA."""

from __future__ import annotations

import copy

import pytest
import torch
from generation_helpers import QUESTION, guard_for, plain_generate, spy_generate, user_turn

from psaguard import CheckpointMismatchError, SafetyGuard
from psaguard.backbones import LlavaBackbone, resolve_backbone, unwrap_model

peft = pytest.importorskip("peft")

# min_new_tokens keeps EOS away so the comparison covers every step, not just an early stop.
GREEDY = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}
LORA_ON_LLM = r".*language_model.*\.(q_proj|v_proj)"


@pytest.fixture(scope="module")
def wrapped(tiny_model):
    """The tiny LLaVA with a LoRA on its language model whose update is not zero (so it changes answers)."""
    model = peft.get_peft_model(copy.deepcopy(tiny_model), peft.LoraConfig(r=4, target_modules=LORA_ON_LLM))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    return model.eval()


def test_the_adapter_reads_the_parts_inside_the_wrapper(wrapped, tiny_model):
    backbone = resolve_backbone(wrapped)
    assert isinstance(backbone, LlavaBackbone) and backbone.model is wrapped
    assert backbone.base_model is unwrap_model(wrapped) and backbone.base_model is not wrapped
    assert backbone.fingerprint() == resolve_backbone(tiny_model).fingerprint()


def test_verdicts_equal_the_bare_models_since_the_lora_leaves_vision_and_embeddings_alone(
    wrapped, tiny_model, tiny_processor, images
):
    torch.manual_seed(0)
    bare = SafetyGuard.attach(tiny_model, tiny_processor)
    guard = SafetyGuard(wrapped, tiny_processor, bare.config, bare.modules)
    for ours, theirs in zip(guard.classify_batch(images, [QUESTION] * 3), bare.classify_batch(images, [QUESTION] * 3)):
        assert ours.level_probs == pytest.approx(theirs.level_probs, abs=1e-6)


def test_guarded_generation_runs_through_the_wrapper_token_for_token(wrapped, tiny_model, tiny_processor, images):
    expected = plain_generate(wrapped, tiny_processor, [images[1]], [user_turn(QUESTION)], **GREEDY)
    assert expected != plain_generate(tiny_model, tiny_processor, [images[1]], [user_turn(QUESTION)], **GREEDY)
    guard = guard_for(wrapped, tiny_processor, inject=False, level=0)
    with spy_generate(wrapped) as outputs:
        result = guard.generate(images[1], QUESTION, **GREEDY)
    assert result.generated and outputs[0][0, -GREEDY["max_new_tokens"] :].tolist() == expected
    assert "".join(guard.stream(images[1], QUESTION, **GREEDY)) == result.text

    text = tiny_processor.apply_chat_template([user_turn(QUESTION)], add_generation_prompt=True, tokenize=False)
    inputs = tiny_processor(images=[images[1]], text=[text], return_tensors="pt")
    with torch.inference_mode():
        plain = wrapped.generate(**inputs, **GREEDY)
    assert torch.equal(guard.wrap().generate(**inputs, **GREEDY), plain)


def test_a_guard_saved_on_the_wrapped_model_loads_on_the_bare_one_and_not_on_another_family(
    wrapped, tiny_model, tiny_processor, next_model, next_processor, images, tmp_path
):
    guard = guard_for(wrapped, tiny_processor, level=1)
    path = guard.save_pretrained(tmp_path / "guard")
    loaded = SafetyGuard.from_pretrained(path, tiny_model, tiny_processor)
    assert loaded.classify(images[0], QUESTION).level_probs == pytest.approx(
        guard.classify(images[0], QUESTION).level_probs, abs=1e-6
    )
    with pytest.raises(CheckpointMismatchError, match="family"):
        SafetyGuard.from_pretrained(path, next_model, next_processor)


def test_a_guards_own_lora_is_not_stacked_silently_onto_a_wrapped_model(wrapped, tiny_model, tiny_processor, tmp_path):
    from psaguard import CheckpointError

    torch.manual_seed(0)
    path = SafetyGuard.attach(tiny_model, tiny_processor).save_pretrained(tmp_path / "guard")
    config = peft.LoraConfig(r=4, target_modules=LORA_ON_LLM)
    peft.get_peft_model(copy.deepcopy(tiny_model), config).save_pretrained(path / "adapter")
    with pytest.raises(CheckpointError, match="already wrapped"):
        SafetyGuard.from_pretrained(path, wrapped, tiny_processor)
    kept = SafetyGuard.from_pretrained(path, wrapped, tiny_processor, load_adapter=False)
    assert kept.model is wrapped
    loaded = SafetyGuard.from_pretrained(path, copy.deepcopy(tiny_model), tiny_processor)
    assert isinstance(loaded.model, peft.PeftModel)
