"""A tiny Gemma 3 (SigLIP tower, pooled soft tokens, Gemma 3 LLM) with random weights, and its processor.

The processor is transformers' own ``Gemma3Processor`` over ``Gemma3ImageProcessorPil`` (fixed square
resize, no pan-and-scan). Its chat template writes ``<start_of_image>`` per image, which the processor
replaces by ``\\n\\n<start_of_image>`` + one ``<image_soft_token>`` per pooled embedding +
``<end_of_image>\\n\\n``: the template's placeholder is not the model's image token. The word-level tiny
tokenizer drops the newlines (whitespace), as real Gemma tokenizers keep them as their own tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

from psaguard.testing.llava import (
    TinyLlavaSpec,
    init_tiny_model,
    save_pretrained_pair,
    tiny_chat_template,
    tiny_text_config,
    tiny_tokenizer,
    tiny_vision_sizes,
)

__all__ = ["GEMMA3_TOKENS", "build_tiny_gemma3", "build_tiny_gemma3_processor", "save_tiny_gemma3"]

GEMMA3_TOKENS = {
    "image_token": "<image_soft_token>",
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
}
"""The tokens of Gemma 3's image run, by the tokenizer attribute names ``Gemma3Processor`` reads."""

# Soft tokens per image: the projector average-pools the 8 x 8 patch grid of a 32 px image to 4 x 4.
_TOKENS_PER_IMAGE = 16


def build_tiny_gemma3_processor(spec: TinyLlavaSpec | None = None):  # -> Gemma3Processor
    """``Gemma3Processor`` over the tiny tokenizer and a ``spec.image_size`` square resize."""
    from transformers import Gemma3ImageProcessorPil, Gemma3Processor

    spec = spec or TinyLlavaSpec()
    image_processor = Gemma3ImageProcessorPil(
        size={"height": spec.image_size, "width": spec.image_size}, do_pan_and_scan=False
    )
    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer(spec, GEMMA3_TOKENS),
        chat_template=tiny_chat_template(GEMMA3_TOKENS["boi_token"]),
        image_seq_length=_TOKENS_PER_IMAGE,
    )


def build_tiny_gemma3(spec: TinyLlavaSpec | None = None, processor=None):  # -> Gemma3ForConditionalGeneration
    """A tiny ``Gemma3ForConditionalGeneration`` with random weights, sized by ``spec``.

    Embeddings are untied (Gemma 3 ties them by default) and the image projection is random (Gemma 3
    starts it at zero): otherwise a random tiny model only repeats its last prompt token or ignores the
    image, and tests comparing generations would compare nothing.
    """
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    spec = spec or TinyLlavaSpec()
    processor = processor or build_tiny_gemma3_processor(spec)
    tok = processor.tokenizer
    vision = SiglipVisionConfig(**tiny_vision_sizes(spec), vision_use_head=False)
    text = tiny_text_config(
        spec,
        tok,
        "gemma3_text",
        head_dim=spec.text_hidden // spec.heads,
        query_pre_attn_scalar=spec.text_hidden // spec.heads,
        sliding_window=64,
        tie_word_embeddings=False,
    )
    ids = tok.convert_tokens_to_ids
    config = Gemma3Config(
        vision_config=vision,
        text_config=text,
        mm_tokens_per_image=_TOKENS_PER_IMAGE,
        image_token_index=ids(GEMMA3_TOKENS["image_token"]),
        boi_token_index=ids(GEMMA3_TOKENS["boi_token"]),
        eoi_token_index=ids(GEMMA3_TOKENS["eoi_token"]),
        tie_word_embeddings=False,
    )
    model = init_tiny_model(Gemma3ForConditionalGeneration, config, tok, spec.seed)
    # Gemma 3 initializes its image projection to zeros: every image would embed alike and the answer
    # would not depend on it. A seeded random projection (own generator: the global RNG stays put).
    projection = model.model.multi_modal_projector.mm_input_projection_weight
    generator = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        projection.copy_(torch.randn(projection.shape, generator=generator) * config.initializer_range * 10)
    return model


def save_tiny_gemma3(path: str | Path, spec: TinyLlavaSpec | None = None) -> Path:
    """Build a tiny Gemma 3 and its processor and save both to ``path`` (``AutoProcessor`` loads it)."""
    processor = build_tiny_gemma3_processor(spec)
    return save_pretrained_pair(path, build_tiny_gemma3(spec, processor), processor)
