"""A tiny GLM-4V (GLM-4.1V layout: native-resolution ViT, 2 x 2 conv downsample + merger, M-RoPE GLM-4 LLM).

``Glm4vProcessor`` requires a video processor, which needs torchvision, so :class:`TinyGlm4vProcessor` is
GLM-4V's processor without the video part: ``Glm4vImageProcessorPil`` (Qwen2-VL-style patches in 2 x 2
merge blocks, ``image_grid_thw``) and the same text handling (``<|image|>`` once per merged patch). The chat
template writes ``<|begin_of_image|><|image|><|end_of_image|>`` per image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import Glm4vProcessor

from psaguard.testing.llava import TinyLlavaSpec, init_tiny_model, save_pretrained_pair, tiny_vision_sizes
from psaguard.testing.qwen2_vl import (
    init_images_only_processor,
    mrope_section_for,
    tiny_grid_config,
    tiny_grid_processor,
)

__all__ = ["GLM4V_TOKENS", "TinyGlm4vProcessor", "build_tiny_glm4v", "build_tiny_glm4v_processor", "save_tiny_glm4v"]

GLM4V_TOKENS = {
    "image_token": "<|image|>",
    "video_token": "<|video|>",
    "image_start_token": "<|begin_of_image|>",
    "image_end_token": "<|end_of_image|>",
    "video_start_token": "<|begin_of_video|>",
    "video_end_token": "<|end_of_video|>",
}
"""GLM-4V's vision tokens, by tokenizer attribute name."""


class TinyGlm4vProcessor(Glm4vProcessor):
    """``Glm4vProcessor`` for images only: no video processor (which needs torchvision).

    Args:
        image_processor: a ``Glm4vImageProcessorPil``.
        tokenizer: a tokenizer that knows GLM-4V's vision tokens (:data:`GLM4V_TOKENS`).
        chat_template: the chat template; an image renders as ``<|begin_of_image|><|image|><|end_of_image|>``.
    """

    def __init__(self, image_processor: Any, tokenizer: Any, chat_template: str | None = None) -> None:
        init_images_only_processor(self, image_processor, tokenizer, chat_template)
        self.video_start_id = tokenizer.convert_tokens_to_ids(GLM4V_TOKENS["video_start_token"])
        self.video_end_id = tokenizer.convert_tokens_to_ids(GLM4V_TOKENS["video_end_token"])


def build_tiny_glm4v_processor(spec: TinyLlavaSpec | None = None) -> TinyGlm4vProcessor:
    """:class:`TinyGlm4vProcessor` over the tiny tokenizer: images of ``4 x 4`` to ``8 x 8`` merged patches."""
    from transformers import Glm4vImageProcessorPil

    placeholder = ("image_start_token", "image_token", "image_end_token")
    return tiny_grid_processor(spec, TinyGlm4vProcessor, Glm4vImageProcessorPil, GLM4V_TOKENS, placeholder)


def build_tiny_glm4v(spec: TinyLlavaSpec | None = None, processor=None):  # -> Glm4vForConditionalGeneration
    """A tiny ``Glm4vForConditionalGeneration`` with random weights, sized by ``spec``."""
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration

    spec = spec or TinyLlavaSpec()
    tok = (processor or build_tiny_glm4v_processor(spec)).tokenizer
    vision = {
        **tiny_vision_sizes(spec),
        "out_hidden_size": spec.text_hidden,
    }
    vision.pop("num_hidden_layers")
    vision.pop("num_attention_heads")
    rotary = spec.text_hidden // spec.heads // 2  # half the head dims rotate
    config = tiny_grid_config(
        Glm4vConfig,
        spec,
        tok,
        "glm4v_text",
        vision,
        GLM4V_TOKENS,
        mrope_section=mrope_section_for(rotary),
        partial_rotary_factor=0.5,
    )
    # Seed offset: at seeds 0 to 2 the random GLM-4 language model answers the test images with one token
    # repeated (mostly end of turn), which would make comparisons of its answers weak.
    return init_tiny_model(Glm4vForConditionalGeneration, config, tok, spec.seed + 4)


def save_tiny_glm4v(path: str | Path, spec: TinyLlavaSpec | None = None) -> Path:
    """Build a tiny GLM-4V and its processor and save both to ``path``."""
    processor = build_tiny_glm4v_processor(spec)
    return save_pretrained_pair(path, build_tiny_glm4v(spec, processor), processor)
