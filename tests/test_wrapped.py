import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from generation_helpers import QUESTION, capture_llm_inputs, count_calls, guard_for, user_turn

from psaguard import GuardBlocked, InvalidInputError
from psaguard.generation import GenerationOptions

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
