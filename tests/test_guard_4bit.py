"""The guard on a language model loaded in 4-bit NF4 (bitsandbytes runs on the CPU too)."""

import numpy as np
import pytest
import torch

from psaguard import SafetyGuard

bnb = pytest.importorskip("bitsandbytes")


def _load_4bit(tiny_dir):
    from transformers import BitsAndBytesConfig, LlavaForConditionalGeneration

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.float32,
        llm_int8_skip_modules=["model.vision_tower", "model.multi_modal_projector", "lm_head"],
    )
    return LlavaForConditionalGeneration.from_pretrained(tiny_dir, quantization_config=quant).eval()


def test_guard_on_a_4bit_llm_judges_like_on_the_full_precision_one(guard, tiny_dir, tiny_processor, images, tmp_path):
    model_4bit = _load_4bit(tiny_dir)
    layer = model_4bit.model.language_model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit)  # the LLM really is quantized
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model_4bit.model.vision_tower.modules())

    guard.save_pretrained(tmp_path / "g")
    guard_4bit = SafetyGuard.from_pretrained(tmp_path / "g", model=model_4bit, processor=tiny_processor)
    prompt = "what color is the circle ?"
    a, b = guard.classify(images[1], prompt), guard_4bit.classify(images[1], prompt)
    # The head reads only the vision tower and the token embeddings, neither of which is quantized.
    np.testing.assert_allclose(list(a.type_probs.values()), list(b.type_probs.values()), atol=1e-5)
    assert a.action == b.action
