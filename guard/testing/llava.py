"""Tiny LLaVA-style models built from configs with random weights.

No weights can be downloaded in tests, demos or CI, so psaguard builds its own small
``LlavaForConditionalGeneration`` and ``LlavaProcessor`` (a word-level tokenizer and a CLIP image
processor) in a few seconds on the CPU, and a LLaVA-NeXT pair (``LlavaNextForConditionalGeneration``,
``LlavaNextProcessor`` with any-resolution tiles) from the same sizes. Layer widths are multiples of 64
so that bitsandbytes' 4-bit kernels run on them, also on the CPU.

Every other family's tiny pair is built by :mod:`psaguard.testing.families` from the family's own configs, on the
tokenizer, chat template and seeded init defined here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "TinyLlavaSpec",
    "build_tiny_llava",
    "build_tiny_processor",
    "init_tiny_model",
    "save_pretrained_pair",
    "save_tiny_llava",
    "tiny_chat_template",
    "tiny_text_config",
    "tiny_tokenizer",
    "tiny_vision_sizes",
]

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")

# A small general vocabulary; callers add their own words (the synthetic world does).
BASE_WORDS = tuple(
    "user assistant system : . , ? ! ' what is the a an of in on this image picture photo describe how do i "
    "make it show me tell about color colour shape count many there are red green blue yellow black white "
    "circle square triangle star word text say read sorry can't cannot help with that request because "
    "involves yes no please answer question safe careful hint you must refuse".split()
)


def tiny_chat_template(image_placeholder: str = "<image>") -> str:
    """The tiny models' chat template; an image part renders as ``image_placeholder`` and a space."""
    return (
        "{% for message in messages %}"
        "{{ message['role'] }} : "
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        f"{{% if part['type'] == 'image' %}}{image_placeholder} "
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        " </s> "
        "{% endfor %}"
        "{% if add_generation_prompt %}assistant : {% endif %}"
    )


CHAT_TEMPLATE = tiny_chat_template()


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
    tie_embeddings: bool = Field(
        False, description="Share the language model's input embeddings with its output layer (small LLMs often do)."
    )
    seed: int = Field(0, description="Seed of the random weights.")


def build_tiny_processor(spec: TinyLlavaSpec | None = None):  # -> LlavaProcessor
    """Build a ``LlavaProcessor`` with a word-level tokenizer and a CLIP image processor."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    spec = spec or TinyLlavaSpec()
    return LlavaProcessor(image_processor=CLIPImageProcessorPil(**_image_sizes(spec)), **_processor_parts(spec))


def build_tiny_llava(spec: TinyLlavaSpec | None = None, processor=None):  # -> LlavaForConditionalGeneration
    """Build a tiny ``LlavaForConditionalGeneration`` with random weights, sized by ``spec``."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    spec = spec or TinyLlavaSpec()
    processor = processor or build_tiny_processor(spec)
    tok = processor.tokenizer
    config = LlavaConfig(
        vision_config=_vision_config(spec),
        text_config=tiny_text_config(spec, tok, tie_word_embeddings=spec.tie_embeddings),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=spec.vision_feature_layer,
        vision_feature_select_strategy="default",
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    return _ready(LlavaForConditionalGeneration(config), tok)


def save_tiny_llava(path: str | Path, spec: TinyLlavaSpec | None = None) -> Path:
    """Build a tiny model and processor and save both to ``path`` in Hugging Face format."""
    processor = build_tiny_processor(spec)
    return save_pretrained_pair(path, build_tiny_llava(spec, processor), processor)


def save_pretrained_pair(path: str | Path, model, processor) -> Path:
    """Save ``model`` and ``processor`` side by side in ``path`` (Hugging Face format); return the path."""
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _image_sizes(spec: TinyLlavaSpec) -> dict[str, dict[str, int]]:
    """Image-processor sizes: shortest edge resized to, then centre-cropped to, ``spec.image_size``."""
    return {
        "size": {"shortest_edge": spec.image_size},
        "crop_size": {"height": spec.image_size, "width": spec.image_size},
    }


def _processor_parts(spec: TinyLlavaSpec) -> dict[str, Any]:
    """What both tiny processor families share: tokenizer, patch size, feature strategy, chat template."""
    return {
        "tokenizer": tiny_tokenizer(spec),
        "patch_size": spec.patch_size,
        "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1,
        "chat_template": CHAT_TEMPLATE,
    }


def tiny_tokenizer(spec: TinyLlavaSpec, named_tokens: Mapping[str, str] | None = None):  # -> PreTrainedTokenizerFast
    """A word-level tokenizer over the tiny vocabulary plus ``spec.extra_words``.

    ``named_tokens`` are special tokens the tokenizer exposes as attributes (``tokenizer.image_token`` and
    ``tokenizer.image_token_id`` for ``{"image_token": "<image>"}``, the default); tokens not in the
    vocabulary are appended to it. Special tokens are matched before the pre-tokenizer splits punctuation.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab=_vocabulary(spec.extra_words), unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens=dict(named_tokens or {"image_token": "<image>"}),
        padding_side="left",
    )


def _vision_config(spec: TinyLlavaSpec):  # -> CLIPVisionConfig
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(**tiny_vision_sizes(spec), projection_dim=spec.vision_hidden)


def tiny_vision_sizes(spec: TinyLlavaSpec) -> dict[str, int]:
    """The vision tower's sizes from ``spec``, as the keyword arguments every ViT-style vision config takes."""
    return {
        "hidden_size": spec.vision_hidden,
        "intermediate_size": spec.vision_hidden * 2,
        "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": spec.heads,
        "image_size": spec.image_size,
        "patch_size": spec.patch_size,
    }


def tiny_text_config(spec: TinyLlavaSpec, tok, model_type: str = "llama", **overrides: Any):  # -> PreTrainedConfig
    """The language model's config of ``model_type`` (Llama by default) at the spec's sizes, for ``tok``."""
    from transformers import AutoConfig

    return AutoConfig.for_model(
        model_type,
        hidden_size=spec.text_hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        vocab_size=_round_up(len(tok), 64),
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **overrides,
    )


def init_tiny_model(model_class: type, config: Any, tok, seed: int):  # -> PreTrainedModel
    """``model_class(config)`` with random weights drawn from ``seed``, in eval mode, generating with ``tok``'s ids.

    The global random state is forked, so building a model leaves the caller's RNG where it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    return _ready(model, tok)


def _ready(model, tok):
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model.eval()


def _vocabulary(extra: Iterable[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for word in (*SPECIAL_TOKENS, *BASE_WORDS, *extra):
        vocab.setdefault(word, len(vocab))
    return vocab


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple
