"""The guard's parameter count at each newer family's smallest released size, counted on the meta device.

    python benchmarks/family_guard_params.py

Each model is built from a config written here with the sizes its released ``config.json`` gives (nothing is
downloaded; the meta device holds no weights). For each: the model's parameters, the safety modules' (the
default ``SafetyGuardConfig``: safety projector, head, safety tokens), and the square grid the safety
projector sees (``Backbone.patch_grid``, recorded in the guard's fingerprint).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Glm4vConfig,
    Glm4vForConditionalGeneration,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)

from psaguard import SafetyGuardConfig
from psaguard.backbones import resolve_backbone
from psaguard.modules import SafetyModules

# SigLIP so400m/14, the tower of Gemma 3 (at 896 px) and Idefics3 (at 364 px tiles).
_SO400M = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16}


def gemma3_4b() -> tuple[type, Gemma3Config]:
    """google/gemma-3-4b-it: SigLIP so400m at 896 px, Gemma 3 4B (34 layers, 2560 wide)."""
    text = {
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "num_hidden_layers": 34,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "vocab_size": 262208,
        "sliding_window": 1024,
    }
    vision = {**_SO400M, "image_size": 896, "patch_size": 14, "vision_use_head": False}
    return Gemma3ForConditionalGeneration, Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=256)


def smolvlm_256m() -> tuple[type, SmolVLMConfig]:
    """HuggingFaceTB/SmolVLM-256M-Instruct: SigLIP base/16 at 512 px tiles, SmolLM2-135M, pixel shuffle 4."""
    vision = {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 512,
        "patch_size": 16,
    }
    text = {
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49280,
        "tie_word_embeddings": False,
    }
    return SmolVLMForConditionalGeneration, SmolVLMConfig(vision_config=vision, text_config=text, scale_factor=4)


def idefics3_8b() -> tuple[type, Idefics3Config]:
    """HuggingFaceM4/Idefics3-8B-Llama3: SigLIP so400m at 364 px tiles, Llama 3 8B, pixel shuffle 2."""
    vision = {**_SO400M, "image_size": 364, "patch_size": 14}
    text = {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128259,
    }
    return Idefics3ForConditionalGeneration, Idefics3Config(vision_config=vision, text_config=text, scale_factor=2)


def qwen2_vl_2b() -> tuple[type, Qwen2VLConfig]:
    """Qwen/Qwen2-VL-2B-Instruct: 675M ViT (32 blocks, 1280 wide, 14 px patches), Qwen2 1.5B, tied embeddings."""
    vision = {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4}
    text = {
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    }
    config = Qwen2VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=True)
    return Qwen2VLForConditionalGeneration, config


def qwen2_5_vl_3b() -> tuple[type, Qwen2_5_VLConfig]:
    """Qwen/Qwen2.5-VL-3B-Instruct: windowed ViT (32 blocks, 1280 wide), Qwen2.5 3B, tied embeddings."""
    vision = {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 2048,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
    }
    text = {
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    }
    config = Qwen2_5_VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=True)
    return Qwen2_5_VLForConditionalGeneration, config


def qwen3_vl_2b() -> tuple[type, Qwen3VLConfig]:
    """Qwen/Qwen3-VL-2B-Instruct: ViT (24 blocks, 1024 wide, 16 px patches, deepstack 5/11/17), Qwen3 1.7B."""
    vision = {
        "depth": 24,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_heads": 16,
        "out_hidden_size": 2048,
        "patch_size": 16,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [5, 11, 17],
    }
    text = {
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    }
    config = Qwen3VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=True)
    return Qwen3VLForConditionalGeneration, config


def glm4v_9b() -> tuple[type, Glm4vConfig]:
    """zai-org/GLM-4.1V-9B-Thinking: transformers' Glm4vConfig defaults are this release's sizes."""
    return Glm4vForConditionalGeneration, Glm4vConfig()


FAMILIES: dict[str, Callable[[], tuple[type, object]]] = {
    "gemma-3-4b": gemma3_4b,
    "smolvlm-256m": smolvlm_256m,
    "idefics3-8b": idefics3_8b,
    "qwen2-vl-2b": qwen2_vl_2b,
    "qwen2.5-vl-3b": qwen2_5_vl_3b,
    "qwen3-vl-2b": qwen3_vl_2b,
    "glm-4.1v-9b": glm4v_9b,
}


NOT_COUNTED: dict[str, tuple[str, str]] = {
    # release: (model_type, why it is not counted). Each of these model types is known to the pinned
    # transformers (5.24), but no published config.json of the release could be read from this environment,
    # and transformers' config defaults do not reproduce it, so no number is given rather than a guessed one.
    # text sizes: https://apxml.com/models/qwen35-08b (a third-party page, not the config)
    "Qwen3.5-0.8B": (
        "qwen3_5",
        "config.json not found (third-party pages give only the text sizes: 24 layers, 1024 wide); "
        "Qwen3_5Config() defaults (docstring: 'similar to Qwen/Qwen3.5-27B') build 9.4B parameters",
    ),
    "gemma-4-E2B-it": (
        "gemma4",
        "config.json not found; Gemma4Config() defaults (docstring: 'similar to google/gemma-4-e2b-it') have "
        "no vision config",
    ),
    "Llama-4-Scout-17B-16E": (
        "llama4",
        "config.json not found; Llama4Config() defaults (docstring: 'similar to meta-llama/Llama-4-Scout-17B-16E') "
        "are not checked against it",
    ),
    "Kimi-K2.5": (
        "kimi_k25",
        "config.json not found (one size released); Kimi_K25Config() defaults name Kimi-K2.6 in their docstring",
    ),
    # https://huggingface.co/zai-org/GLM-4.6V-Flash/tree/main (file list and tags, not config.json's values)
    "GLM-4.6V-Flash": (
        "glm46v",
        "config.json not found (its hub page lists model_type glm4v, 20.6 GB of bf16 weights); Glm46VConfig() "
        "defaults (docstring: 'similar to GLM-4.1V-9B-Thinking') build the same 10,292,777,472 parameters as "
        "glm-4.1v-9b above",
    ),
    "MiniCPM-V-4.6": (
        "minicpmv4_6",
        "config.json not found; a model built from MiniCPMV4_6Config() defaults (docstring: 'similar to "
        "openbmb/MiniCPM-V-4.6') names no image token id, which the generic adapter refuses",
    ),
    # https://transformers-doc.pages.dev/model_doc/lfm2_vl and the LFM2-VL-450M model card
    "LFM2-VL-450M": (
        "lfm2_vl",
        "config.json not found (model card: LFM2-350M with a SigLIP2 NaFlex base tower); Lfm2VlConfig() "
        "defaults (docstring: 'similar to LiquidAI/LFM2-VL-1.6B') build 2.8B parameters",
    ),
}
"""Releases issue #26 asks for whose guard size this script does not give, and why."""


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    print(f"{'model':<15}{'family':<12}{'model params':>16}{'guard params':>15}{'guard/model':>12}  safety grid")
    for name, build in FAMILIES.items():
        model_class, config = build()
        with torch.device("meta"):
            model = model_class(config)
            backbone = resolve_backbone(model)
            modules = SafetyModules(SafetyGuardConfig(), backbone.vision_hidden_size, backbone.text_hidden_size)
        rows, cols = backbone.patch_grid
        print(
            f"{name:<15}{backbone.family:<12}{count(model):>16,}{count(modules):>15,}"
            f"{count(modules) / count(model):>12.2%}  {rows} x {cols}"
        )
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    print("\nnot counted (no published config read here):")
    for release, (model_type, why) in NOT_COUNTED.items():
        known = "known" if model_type in CONFIG_MAPPING_NAMES else "UNKNOWN"
        print(f"  {release} ({model_type}, {known} to this transformers): {why}")


if __name__ == "__main__":
    main()
