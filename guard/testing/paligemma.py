"""A tiny PaliGemma (SigLIP tower, linear projector, Gemma LLM with prefix-LM attention) and its processor.

psaguard has no PaliGemma adapter yet (see ``tests/backbones/test_paligemma.py`` for what it lacks); this
builder exists so that the missing support is tested as an expected failure. The processor is
transformers' own ``PaliGemmaProcessor`` over ``SiglipImageProcessorPil``; PaliGemma checkpoints have no
chat template, so the tiny one gets the tiny models' template (an image renders as ``<image>``).
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

__all__ = ["build_tiny_paligemma", "build_tiny_paligemma_processor", "save_tiny_paligemma"]


def build_tiny_paligemma_processor(spec: TinyLlavaSpec | None = None):  # -> PaliGemmaProcessor
    """``PaliGemmaProcessor`` over the tiny tokenizer and a ``spec.image_size`` square resize."""
    from transformers import PaliGemmaProcessor, SiglipImageProcessorPil

    spec = spec or TinyLlavaSpec()
    image_processor = SiglipImageProcessorPil(size={"height": spec.image_size, "width": spec.image_size})
    image_processor.image_seq_length = (spec.image_size // spec.patch_size) ** 2
    return PaliGemmaProcessor(
        image_processor=image_processor, tokenizer=tiny_tokenizer(spec), chat_template=tiny_chat_template("<image>")
    )


def build_tiny_paligemma(spec: TinyLlavaSpec | None = None, processor=None):  # -> PaliGemmaForConditionalGeneration
    """A tiny ``PaliGemmaForConditionalGeneration`` with random weights (untied output head), sized by ``spec``."""
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, SiglipVisionConfig

    spec = spec or TinyLlavaSpec()
    processor = processor or build_tiny_paligemma_processor(spec)
    tok = processor.tokenizer
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(**tiny_vision_sizes(spec), vision_use_head=False),
        text_config=tiny_text_config(spec, tok, "gemma", head_dim=spec.text_hidden // spec.heads),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        projection_dim=spec.text_hidden,
        tie_word_embeddings=False,
    )
    return init_tiny_model(PaliGemmaForConditionalGeneration, config, tok, spec.seed)


def save_tiny_paligemma(path: str | Path, spec: TinyLlavaSpec | None = None) -> Path:
    """Build a tiny PaliGemma and its processor and save both to ``path``."""
    processor = build_tiny_paligemma_processor(spec)
    return save_pretrained_pair(path, build_tiny_paligemma(spec, processor), processor)
