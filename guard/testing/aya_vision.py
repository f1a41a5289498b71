"""A tiny Aya Vision (SigLIP tower, pixel shuffle, SwiGLU projector, Cohere2 LLM) with random weights, and processor.

The processor is transformers' own ``AyaVisionProcessor`` over ``GotOcr2ImageProcessorPil`` tiles. Its chat
template writes ``<image>``, which the processor replaces by
``<|START_OF_IMG|> TILE_1 <|IMG_PATCH|>... TILE_GLOBAL <|IMG_PATCH|>... <|END_OF_IMG|>``: the model's image
token is ``<|IMG_PATCH|>``, not the template's placeholder. ``TILE_1`` and ``TILE_GLOBAL`` are plain text,
which the tiny word-level tokenizer splits into ``TILE``, ``_`` and ``1`` / ``GLOBAL``.
"""

from __future__ import annotations

from pathlib import Path

from psaguard.testing.llava import (
    TinyLlavaSpec,
    init_tiny_model,
    save_pretrained_pair,
    tiny_chat_template,
    tiny_text_config,
    tiny_tokenizer,
    tiny_vision_sizes,
)

__all__ = ["AYA_VISION_TOKENS", "build_tiny_aya_vision", "build_tiny_aya_vision_processor", "save_tiny_aya_vision"]

AYA_VISION_TOKENS = {
    "image_token": "<image>",
    "start_of_img_token": "<|START_OF_IMG|>",
    "end_of_img_token": "<|END_OF_IMG|>",
    "img_patch_token": "<|IMG_PATCH|>",
    "img_line_break_token": "<|IMG_LINE_BREAK|>",
}
"""The template placeholder and the tokens ``AyaVisionProcessor`` expands it into (its defaults), by its
keyword and tokenizer attribute names."""

# Aya Vision's pixel shuffle merges 2x2 patches into one token (config.downsample_factor).
_DOWNSAMPLE_FACTOR = 2
# The words of the tile markers ``TILE_<i>`` and ``TILE_GLOBAL`` as the tiny tokenizer splits them.
_TILE_WORDS = ("TILE", "GLOBAL", "_", *(str(i) for i in range(1, 13)))


def build_tiny_aya_vision_processor(spec: TinyLlavaSpec | None = None, max_patches: int = 4):  # -> AyaVisionProcessor
    """``AyaVisionProcessor`` over the tiny tokenizer and tiles of ``spec.image_size`` pixels (at most
    ``max_patches`` of them plus the global view)."""
    from transformers import AyaVisionProcessor, GotOcr2ImageProcessorPil

    spec = spec or TinyLlavaSpec()
    spec = spec.model_copy(update={"extra_words": (*spec.extra_words, *_TILE_WORDS)})
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": spec.image_size, "width": spec.image_size}, crop_to_patches=True, max_patches=max_patches
    )
    return AyaVisionProcessor(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer(spec, AYA_VISION_TOKENS),
        patch_size=spec.patch_size,
        img_size=spec.image_size,
        downsample_factor=_DOWNSAMPLE_FACTOR,
        chat_template=tiny_chat_template(AYA_VISION_TOKENS["image_token"]),
        **AYA_VISION_TOKENS,
    )


def build_tiny_aya_vision(spec: TinyLlavaSpec | None = None, processor=None):  # -> AyaVisionForConditionalGeneration
    """A tiny ``AyaVisionForConditionalGeneration`` with random weights, sized by ``spec``.

    Input and output embeddings are not tied (Aya Vision ties them by default): tied, a random tiny model
    only repeats its last prompt token, and tests comparing generations would compare nothing.
    """
    from transformers import AyaVisionConfig, AyaVisionForConditionalGeneration, SiglipVisionConfig

    spec = spec or TinyLlavaSpec()
    processor = processor or build_tiny_aya_vision_processor(spec)
    tok = processor.tokenizer
    vision = SiglipVisionConfig(**tiny_vision_sizes(spec), vision_use_head=False)
    config = AyaVisionConfig(
        vision_config=vision,
        text_config=tiny_text_config(spec, tok, "cohere2"),
        image_token_index=processor.image_token_id,
        downsample_factor=_DOWNSAMPLE_FACTOR,
        vision_feature_layer=spec.vision_feature_layer,
        vision_feature_select_strategy="full",
        tie_word_embeddings=False,
    )
    return init_tiny_model(AyaVisionForConditionalGeneration, config, tok, spec.seed)


def save_tiny_aya_vision(path: str | Path, spec: TinyLlavaSpec | None = None) -> Path:
    """Build a tiny Aya Vision and its processor and save both to ``path`` (``AutoProcessor`` loads it)."""
    processor = build_tiny_aya_vision_processor(spec)
    return save_pretrained_pair(path, build_tiny_aya_vision(spec, processor), processor)
