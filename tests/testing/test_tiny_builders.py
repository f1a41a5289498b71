"""The generic tiny builder (psaguard.testing's, by model type or variant name): saved, reloaded offline, its
pairs generate from their own processors."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText

from psaguard.testing import build_tiny_family
from psaguard.testing.llava import save_pretrained_pair

# The families whose adapters' tests run on these pairs (llava_pixtral: LLaVA with a Pixtral tower).
FAMILIES = (
    "aya_vision",
    "gemma3",
    "glm4v",
    "idefics3",
    "internvl",
    "llava_onevision",
    "llava_pixtral",
    "mistral3",
    "qwen2_5_vl",
    "qwen2_vl",
    "qwen3_vl",
    "smolvlm",
)
CONVERSATION = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this ?"}]}]
GREEDY = {"max_new_tokens": 6, "do_sample": False}


@pytest.fixture(scope="module", params=FAMILIES)
def saved(request, tmp_path_factory):
    """(name, path, reloaded model, reloaded processor): the processor loads with the builder's class, which for
    a family whose processor has parts left out (video) is not transformers' own."""
    build = build_tiny_family(request.param)
    path = save_pretrained_pair(tmp_path_factory.mktemp(request.param), build.model, build.processor)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    assert model.config.model_type == build.model.config.model_type
    return request.param, path, model, type(build.processor).from_pretrained(path)


def _generate(model, processor, images, texts):
    inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**inputs, **GREEDY)
    return out[:, -GREEDY["max_new_tokens"] :].tolist()


def test_reloaded_offline_it_generates_as_the_built_model_did(saved, images):
    name, _, model, processor = saved
    text = processor.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    built = build_tiny_family(name).model
    for image in images:
        assert _generate(model, processor, [image], [text]) == _generate(built, processor, [image], [text])


def test_the_answer_depends_on_the_image(saved, images):
    """Untied output head: the random model does not just echo its prompt, so parity tests compare something."""
    _, _, model, processor = saved
    text = processor.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    answers = [_generate(model, processor, [image], [text])[0] for image in images]
    assert len({tuple(a) for a in answers}) > 1
    assert len(set(answers[0])) > 1


def test_a_padded_batch_of_different_sizes_generates_as_singles(saved, images):
    _, _, model, processor = saved
    text = processor.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    singles = [_generate(model, processor, [image], [text])[0] for image in images[1:]]
    # One list of images per prompt: processors that nest images read a flat list as one sample.
    assert _generate(model, processor, [[image] for image in images[1:]], [text, text]) == singles


@pytest.mark.parametrize("name", ["mistral3", "internvl", "aya_vision", "gemma3", "idefics3"])
def test_building_leaves_the_global_random_state_alone(name):
    state = torch.random.get_rng_state()
    build_tiny_family(name, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_seed_and_overrides_shape_the_model():
    a, b = build_tiny_family("aya_vision", seed=1).model, build_tiny_family("aya_vision", seed=2).model
    assert not torch.equal(a.lm_head.weight, b.lm_head.weight)
    wider = build_tiny_family("aya_vision", overrides={"text_config": {"intermediate_size": 256}}).model
    assert wider.config.text_config.intermediate_size == 256 != a.config.text_config.intermediate_size
