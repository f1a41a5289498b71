"""What a classifier-only guard loads next to the full model, for the tiny model and at LLaVA-1.5-7B shapes.

    python benchmarks/classifier_only_footprint.py

The tiny model is saved and loaded for real (parameters, bytes, load time). The 7B shapes are counted on
the meta device (no weights, no download): the full ``LlavaForConditionalGeneration`` against its classifier-only
model (:func:`~psaguard.backbones.encoder_checkpoint.classifier_only_skeleton`: the CLIP ViT-L/336 vision tower,
the projector and the 32064 x 4096 token-embedding table of llava-hf/llava-1.5-7b-hf's vocabulary), and the
guard's own safety modules (default ``SafetyGuardConfig``), in 16 bits and in float32 (what a CPU
without a native bf16 path computes in, ``psaguard.dtypes``).
"""

from __future__ import annotations

import tempfile
import time

import torch
from shapes import llava_15_7b_config
from torch import nn
from transformers import LlavaForConditionalGeneration

from psaguard.backbones.encoder_checkpoint import classifier_only_skeleton, load_encoder_only
from psaguard.config import SafetyGuardConfig
from psaguard.modules import SafetyModules
from psaguard.testing.llava import save_tiny_llava

BYTES_FP16 = 2
BYTES_FP32 = 4


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def size(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def tiny() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = save_tiny_llava(tmp)
        start = time.perf_counter()
        full = LlavaForConditionalGeneration.from_pretrained(path)
        full_s = time.perf_counter() - start
        start = time.perf_counter()
        encoder = load_encoder_only(path)
        encoder_s = time.perf_counter() - start
    print("tiny LLaVA (float32, saved and loaded):")
    for name, module, seconds in (("full model", full, full_s), ("classifier-only", encoder, encoder_s)):
        print(f"  {name:<16}{count(module):>13,} params {size(module) / 1024:>9.1f} KiB  load {seconds * 1000:.0f} ms")
    print(f"  ratio             {count(encoder) / count(full):.1%}")


def llava_7b_shapes() -> None:
    config = llava_15_7b_config()
    vision, text = config.vision_config, config.text_config
    with torch.device("meta"):
        full = LlavaForConditionalGeneration(config)
        modules = SafetyModules(SafetyGuardConfig(), vision.hidden_size, text.hidden_size)
    light = classifier_only_skeleton(config)
    encoder = count(light)
    rows = {
        "full model": count(full),
        "vision tower": count(light.model.vision_tower),
        "projector": count(light.model.multi_modal_projector),
        "token embeddings": count(light.get_input_embeddings()),
        "classifier-only": encoder,
        "safety modules": count(modules),
        "classifier+modules": encoder + count(modules),
    }
    print("LLaVA-1.5-7B shapes (meta device), sizes in float16/bfloat16 and in float32:")
    for name, params in rows.items():
        sizes = f"{params * BYTES_FP16 / 2**30:>6.2f} GiB {params * BYTES_FP32 / 2**30:>6.2f} GiB"
        print(f"  {name:<18}{params:>13,} params {sizes}")
    print(f"  ratio             {encoder / count(full):.1%}")


if __name__ == "__main__":
    tiny()
    llava_7b_shapes()
