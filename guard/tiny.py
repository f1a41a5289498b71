"""Tiny LLaVA-style models built from configs with random weights.

No weights can be downloaded in tests, demos or CI, so psaguard builds its own small
``LlavaForConditionalGeneration`` and ``LlavaProcessor`` (a word-level tokenizer and a CLIP image
processor) in a few seconds on the CPU. Layer widths are multiples of 64 so that bitsandbytes' 4-bit
kernels run on them, also on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["TinyLlavaSpec", "build_tiny_llava", "build_tiny_processor", "save_tiny_llava"]

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")

# A small general vocabulary; callers add their own words (the synthetic world does).
BASE_WORDS = tuple(
    "user assistant system : . , ? ! ' what is the a an of in on this image picture photo describe how do i "
    "make it show me tell about color colour shape count many there are red green blue yellow black white "
    "circle square triangle star word text say read sorry can't cannot help with that request because "
    "involves yes no please answer question safe careful hint you must refuse".split()
)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }} : "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image> {% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    " </s> "
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


class TinyLlavaSpec(BaseModel):
    """Sizes of a tiny LLaVA model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(32, description="Input image side in pixels.")
    patch_size: int = Field(4, description="ViT patch side in pixels; grid = image_size / patch_size.")
    vision_hidden: int = Field(64, description="Vision tower width.")
    vision_layers: int = Field(2, description="Vision tower depth.")
    text_hidden: int = Field(64, description="Language model width (multiple of 64 for 4-bit on CPU).")
    text_layers: int = Field(2, description="Language model depth.")
    intermediate: int = Field(128, description="Language model MLP width.")
    heads: int = Field(4, description="Attention heads in both towers.")
    vision_feature_layer: int = Field(-2, description="Vision layer whose output feeds the projector.")
    extra_words: tuple[str, ...] = Field((), description="Words added to the tokenizer's vocabulary.")
    seed: int = Field(0, description="Seed of the random weights.")


def build_tiny_processor(spec: TinyLlavaSpec | None = None):  # -> LlavaProcessor
    """Build a ``LlavaProcessor`` with a word-level tokenizer and a CLIP image processor."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPImageProcessorPil, LlavaProcessor, PreTrainedTokenizerFast

    spec = spec or TinyLlavaSpec()
    words = _vocabulary(spec.extra_words)
    backend = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_llava(spec: TinyLlavaSpec | None = None, processor=None):  # -> LlavaForConditionalGeneration
    """Build a tiny ``LlavaForConditionalGeneration`` with random weights, sized by ``spec``."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    spec = spec or TinyLlavaSpec()
    processor = processor or build_tiny_processor(spec)
    tok = processor.tokenizer
    vocab_size = _round_up(len(tok), 64)
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_hidden * 2,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden,
    )
    text = LlamaConfig(
        hidden_size=spec.text_hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        vocab_size=vocab_size,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=spec.vision_feature_layer,
        vision_feature_select_strategy="default",
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model.eval()


def save_tiny_llava(path: str | Path, spec: TinyLlavaSpec | None = None) -> Path:
    """Build a tiny model and processor and save both to ``path`` in Hugging Face format."""
    path = Path(path)
    processor = build_tiny_processor(spec)
    model = build_tiny_llava(spec, processor)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _vocabulary(extra: Iterable[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for word in (*SPECIAL_TOKENS, *BASE_WORDS, *extra):
        vocab.setdefault(word, len(vocab))
    return vocab


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple
