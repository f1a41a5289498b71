"""The tiny builders (psaguard.testing's generic one, by model type, and the hand-made ones left): saved,
reloaded offline, they generate from their own processors."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from psaguard.testing import build_tiny_family, save_tiny_family
from psaguard.testing.aya_vision import build_tiny_aya_vision, build_tiny_aya_vision_processor, save_tiny_aya_vision
from psaguard.testing.glm4v import TinyGlm4vProcessor, build_tiny_glm4v, save_tiny_glm4v
from psaguard.testing.idefics3 import (
    TinySmolVLMProcessor,
    build_tiny_idefics3,
    build_tiny_smolvlm,
    save_tiny_idefics3,
    save_tiny_smolvlm,
)
from psaguard.testing.internvl import TinyInternVLProcessor, build_tiny_internvl, save_tiny_internvl
from psaguard.testing.llava import TinyLlavaSpec
from psaguard.testing.mistral3 import TinyPixtralProcessor, build_tiny_mistral3, save_tiny_mistral3
from psaguard.testing.qwen2_vl import (
    TinyQwen2_5_VLProcessor,
    TinyQwen2VLProcessor,
    TinyQwen3VLProcessor,
    build_tiny_qwen2_5_vl,
    build_tiny_qwen2_vl,
    build_tiny_qwen3_vl,
    save_tiny_qwen2_5_vl,
    save_tiny_qwen2_vl,
    save_tiny_qwen3_vl,
)


class _ImagesOnly:
    """Loads a generic tiny processor whose family's class has parts left out (video), with the builder's class."""

    def __init__(self, model_type: str) -> None:
        self.model_type = model_type

    def from_pretrained(self, path):
        return type(build_tiny_family(self.model_type).processor).from_pretrained(path)


def _generic(model_type: str, processor_class=AutoProcessor):
    """The generic builder's (save, processor class, model builder) for ``model_type``."""
    return (partial(save_tiny_family, model_type), processor_class, lambda: build_tiny_family(model_type).model)


# (save, processor class that loads the saved processor, model builder)
FAMILIES = {
    "mistral3": (save_tiny_mistral3, TinyPixtralProcessor, build_tiny_mistral3),
    "internvl": (save_tiny_internvl, TinyInternVLProcessor, build_tiny_internvl),
    "aya_vision": (save_tiny_aya_vision, AutoProcessor, build_tiny_aya_vision),
    "gemma3": _generic("gemma3"),
    "llava_onevision": _generic("llava_onevision", _ImagesOnly("llava_onevision")),  # saved without its video part
    "idefics3": (save_tiny_idefics3, AutoProcessor, build_tiny_idefics3),
    "smolvlm": (save_tiny_smolvlm, TinySmolVLMProcessor, build_tiny_smolvlm),
    "qwen2_vl": (save_tiny_qwen2_vl, TinyQwen2VLProcessor, build_tiny_qwen2_vl),
    "qwen2_5_vl": (save_tiny_qwen2_5_vl, TinyQwen2_5_VLProcessor, build_tiny_qwen2_5_vl),
    "qwen3_vl": (save_tiny_qwen3_vl, TinyQwen3VLProcessor, build_tiny_qwen3_vl),
    "glm4v": (save_tiny_glm4v, TinyGlm4vProcessor, build_tiny_glm4v),
}
CONVERSATION = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this ?"}]}]
GREEDY = {"max_new_tokens": 6, "do_sample": False}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def saved(request, tmp_path_factory):
    save, processor_class, build = FAMILIES[request.param]
    path = save(tmp_path_factory.mktemp(request.param))
    return request.param, path, processor_class, build


def _generate(model, processor, images, texts):
    inputs = processor(images=images, text=texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**inputs, **GREEDY)
    return out[:, -GREEDY["max_new_tokens"] :].tolist()


def test_reloaded_offline_it_generates_as_the_built_model_did(saved, images):
    family, path, processor_class, build = saved
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = processor_class.from_pretrained(path)
    assert model.config.model_type == family
    text = processor.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    built = build()
    for image in images:
        assert _generate(model, processor, [image], [text]) == _generate(built, processor, [image], [text])


def test_the_answer_depends_on_the_image(saved, images):
    """Untied output head: the random model does not just echo its prompt, so parity tests compare something."""
    _, path, processor_class, _ = saved
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = processor_class.from_pretrained(path)
    text = processor.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    answers = [_generate(model, processor, [image], [text])[0] for image in images]
    assert len({tuple(a) for a in answers}) > 1
    assert len(set(answers[0])) > 1


def test_a_padded_batch_of_different_sizes_generates_as_singles(saved, images):
    _, path, processor_class, _ = saved
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = processor_class.from_pretrained(path)
    text = processor.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    singles = [_generate(model, processor, [image], [text])[0] for image in images[1:]]
    # One list of images per prompt: processors that nest images read a flat list as one sample.
    assert _generate(model, processor, [[image] for image in images[1:]], [text, text]) == singles


def _build_gemma3(spec: TinyLlavaSpec):
    return build_tiny_family("gemma3", seed=spec.seed).model


@pytest.mark.parametrize(
    "build", [build_tiny_mistral3, build_tiny_internvl, build_tiny_aya_vision, _build_gemma3, build_tiny_idefics3]
)
def test_building_leaves_the_global_random_state_alone(build):
    state = torch.random.get_rng_state()
    build(TinyLlavaSpec(seed=3))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_seed_and_sizes_come_from_the_spec():
    a, b = build_tiny_aya_vision(TinyLlavaSpec(seed=1)), build_tiny_aya_vision(TinyLlavaSpec(seed=2))
    assert not torch.equal(a.lm_head.weight, b.lm_head.weight)
    wide = build_tiny_aya_vision(TinyLlavaSpec(text_hidden=128, extra_words=("zebra",)))
    assert wide.config.text_config.hidden_size == 128
    assert "zebra" in build_tiny_aya_vision_processor(TinyLlavaSpec(extra_words=("zebra",))).tokenizer.get_vocab()
