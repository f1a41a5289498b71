"""LLaVA-1.5-7B's shapes for the benchmarks: configs only, so models build with random weights or on meta.

CLIP ViT-L/14 at 336 px (24 layers, 1024 wide) and a Llama-2-7B language model (32 layers, 4096 wide),
with llava-hf/llava-1.5-7b-hf's vocabulary of 32064 tokens. Nothing is downloaded.
"""

from __future__ import annotations

from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

__all__ = ["LLAVA_15_7B_VOCAB", "llava_15_7b_config"]

LLAVA_15_7B_VOCAB = 32064


def llava_15_7b_config(image_token_id: int = 32000, vocab_size: int = LLAVA_15_7B_VOCAB) -> LlavaConfig:
    """The ``LlavaConfig`` of LLaVA-1.5-7B (feature layer -2, CLS token dropped, as the released model)."""
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
    )
    text = LlamaConfig(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=vocab_size
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
