import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from generation_helpers import QUESTION, capture_llm_inputs, count_calls, guard_for, user_turn

from psaguard import GuardBlocked, InvalidInputError, SafetyGuard
from psaguard.policy import GenerationOptions

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "wrap_existing_vlm.py"
GREEDY = {"max_new_tokens": 5, "do_sample": False}


def _inputs(processor, images, questions):
    texts = [
        processor.apply_chat_template([user_turn(q)], add_generation_prompt=True, tokenize=False) for q in questions
    ]
    return processor(images=images, text=texts, padding=True, return_tensors="pt")


def test_allowed_batch_is_identical_to_the_plain_model_without_llm_tokens(tiny_model, tiny_processor, images):
    guard = guard_for(tiny_model, tiny_processor, inject=False, level=0)
    inputs = _inputs(tiny_processor, images[:2], [QUESTION, "describe the picture in this photo ?"])
    assert (inputs["attention_mask"] == 0).any()  # really left-padded rows
    with torch.inference_mode():
        expected = tiny_model.generate(**inputs, **GREEDY)
    guarded = guard.wrap()
    with count_calls(guard.backbone.vision_tower) as tower:
        ids = guarded.generate(**inputs, **GREEDY)
    assert torch.equal(ids, expected)
    assert len(tower) == 1


def test_wrapped_model_injects_llm_tokens_and_returns_the_callers_prompt(tiny_model, tiny_processor, images):
    guard = guard_for(tiny_model, tiny_processor, inject=True, level=0)
    inputs = _inputs(tiny_processor, images[:1], [QUESTION])
    with capture_llm_inputs(tiny_model) as seen:
        ids, results = guard.wrap().generate_with_results(**inputs, **GREEDY)
    assert seen[0]["input_ids"].shape[1] == inputs["input_ids"].shape[1] + guard.config.tokens.num_tokens
    assert torch.equal(ids[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert results[0].action == "allow" and results[0].prompt_tokens == seen[0]["input_ids"].shape[1]


def test_wrapped_hint_lands_where_guard_generate_puts_it(tiny_model, tiny_processor, images):
    guard = guard_for(tiny_model, tiny_processor, level=1, hints={1: "you must refuse"})
    options = GenerationOptions(hint_template=" safe hint : {hint}")
    with capture_llm_inputs(tiny_model) as seen:
        guard.wrap(options=options).generate(**_inputs(tiny_processor, images[:1], [QUESTION]), **GREEDY)
        guard.generate(images[0], QUESTION, options=options, **GREEDY)
    assert torch.equal(seen[0]["input_ids"], seen[1]["input_ids"])
    assert "safe hint : you must refuse </s> assistant :" in tiny_processor.decode(seen[0]["input_ids"][0])


def test_wrapped_refuses_with_the_refusal_tokens_and_blocks_with_an_error(tiny_model, tiny_processor, images):
    inputs = _inputs(tiny_processor, images[:1], [QUESTION])
    refusing = guard_for(tiny_model, tiny_processor, level=3, refusal="sorry , i cannot help with that .")
    with count_calls(tiny_model.model.language_model) as calls:
        ids, results = refusing.wrap().generate_with_results(**inputs, **GREEDY)
    answer = tiny_processor.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert calls == [] and not results[0].generated and answer == results[0].text == "sorry , i cannot help with that ."
    blocking = guard_for(tiny_model, tiny_processor, level=3, level_actions={1: "hint", 2: "hint", 3: "block"})
    with pytest.raises(GuardBlocked):
        blocking.wrap().generate(**inputs, **GREEDY)


def test_wrapped_model_keeps_model_attributes_but_no_unguarded_forward(tiny_model, tiny_processor, images):
    guarded = guard_for(tiny_model, tiny_processor).wrap(tiny_model)
    assert guarded.config is tiny_model.config and guarded.device == tiny_model.device
    assert guarded.generation_config is tiny_model.generation_config
    assert guarded.eval() is guarded  # chaining must not unwrap the model
    with pytest.raises(AttributeError, match="guards generate"):
        guarded.forward  # noqa: B018
    with pytest.raises(InvalidInputError):
        guarded.generate(inputs_embeds=torch.zeros(1, 3, 64))


def test_text_only_requests_pass_through_unchanged(tiny_model, tiny_processor):
    inputs = tiny_processor.tokenizer(["what is a circle ?"], return_tensors="pt")
    with torch.inference_mode():
        expected = tiny_model.generate(**inputs, **GREEDY)
    ids = guard_for(tiny_model, tiny_processor, level=3).wrap().generate(**inputs, **GREEDY)
    assert torch.equal(ids, expected)


def test_wrap_existing_vlm_example_runs_offline():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "guarded model:" in result.stdout and "GuardBlocked" in result.stdout
    assert "strict policy : action=refuse" in result.stdout


# ---------------------------------------------------------------- LLaVA-NeXT: tiles and image_sizes
NEXT_QUESTIONS = [QUESTION, "describe the picture", "how many circle are there ?"]


def _next_inputs(processor, images, turns):
    texts = [processor.apply_chat_template([turn], add_generation_prompt=True, tokenize=False) for turn in turns]
    return processor(images=images, text=texts, padding=True, return_tensors="pt")


def test_next_allowed_batch_is_identical_to_the_plain_model_with_one_vision_pass(
    next_model, next_processor, shaped_images
):
    guard = guard_for(next_model, next_processor, inject=False, level=0)
    inputs = _next_inputs(next_processor, shaped_images, [user_turn(q) for q in NEXT_QUESTIONS])
    assert inputs["pixel_values"].dim() == 5 and (inputs["attention_mask"] == 0).any()  # tiles, left padding
    greedy = {**GREEDY, "min_new_tokens": 5}  # no early EOS: every step is compared
    with torch.inference_mode():
        expected = next_model.generate(**inputs, **greedy)
    with count_calls(next_model.model.vision_tower) as tower:
        ids, results = guard.wrap().generate_with_results(**inputs, **greedy)
    assert torch.equal(ids, expected)
    assert tower == [1]
    assert [r.action for r in results] == ["allow"] * 3 and all(r.generated for r in results)


def test_next_verdicts_equal_classify_on_the_same_requests(next_model, next_processor, shaped_images):
    torch.manual_seed(0)
    guard = SafetyGuard.attach(next_model, next_processor)  # random head: verdicts differ per image and prompt
    inputs = _next_inputs(next_processor, shaped_images, [user_turn(q) for q in NEXT_QUESTIONS])
    _, results = guard.wrap().generate_with_results(**inputs, max_new_tokens=1)
    # The wrapper judges each row's text as the model reads it: special tokens and placeholders dropped.
    judged = [f"user : {q} assistant :" for q in NEXT_QUESTIONS]
    for image, prompt, result in zip(shaped_images, judged, results):
        alone = guard.classify(image, prompt)
        assert result.verdict.action == alone.action and result.verdict.rule == alone.rule
        assert result.verdict.level_probs == pytest.approx(alone.level_probs, abs=1e-5)
        assert result.verdict.type_probs == pytest.approx(alone.type_probs, abs=1e-5)
    # Really three different requests, not one verdict repeated.
    assert len({tuple(round(p, 6) for p in r.verdict.level_probs.values()) for r in results}) == 3


def test_next_rows_with_several_images_get_safety_tokens_before_each(next_model, next_processor, shaped_images):
    guard = guard_for(next_model, next_processor, inject=True, level=0)
    turns = [user_turn("compare these", num_images=2), user_turn(QUESTION)]
    inputs = _next_inputs(next_processor, shaped_images, turns)  # row 0: images 0 and 1 in one run
    with capture_llm_inputs(next_model) as seen:
        ids, results = guard.wrap().generate_with_results(**inputs, **GREEDY)
    tokens = guard.config.tokens.num_tokens
    lengths = inputs["attention_mask"].sum(1).tolist()
    assert [len(r.verdicts) for r in results] == [2, 1]
    assert [r.prompt_tokens for r in results] == [lengths[0] + 2 * tokens, lengths[1] + tokens]
    assert seen[0]["input_ids"].shape[1] == max(r.prompt_tokens for r in results)
    assert torch.equal(ids[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


def test_next_hint_matches_guard_generate_and_refusal_skips_the_model(next_model, next_processor, shaped_images):
    inputs = _next_inputs(next_processor, shaped_images[1:2], [user_turn(QUESTION)])
    hinting = guard_for(next_model, next_processor, level=1, hints={1: "you must refuse"})
    with capture_llm_inputs(next_model) as seen:
        hinting.wrap().generate(**inputs, **GREEDY)
        hinting.generate(shaped_images[1], QUESTION, **GREEDY)
    assert torch.equal(seen[0]["input_ids"], seen[1]["input_ids"])
    torch.testing.assert_close(seen[0]["inputs_embeds"], seen[1]["inputs_embeds"])
    refusing = guard_for(next_model, next_processor, level=3, refusal="sorry , i cannot help with that .")
    with count_calls(next_model.model.language_model) as calls:
        ids, results = refusing.wrap().generate_with_results(**inputs, **GREEDY)
    answer = next_processor.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert calls == [] and not results[0].generated and answer == "sorry , i cannot help with that ."


def test_next_inputs_without_image_sizes_are_refused_by_name(next_model, next_processor, shaped_images):
    inputs = _next_inputs(next_processor, shaped_images[:1], [user_turn(QUESTION)])
    inputs.pop("image_sizes")
    with pytest.raises(InvalidInputError, match="image_sizes"):
        guard_for(next_model, next_processor).wrap().generate(**inputs, **GREEDY)


def test_inputs_of_another_familys_processor_are_refused_by_family(tiny_model, tiny_processor, images):
    inputs = _inputs(tiny_processor, images[:1], [QUESTION])
    with pytest.raises(InvalidInputError, match=r"\['image_sizes'\] come from another model family's processor"):
        guard_for(tiny_model, tiny_processor).wrap().generate(**inputs, image_sizes=torch.tensor([[32, 32]]))
