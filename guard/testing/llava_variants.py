"""Tiny random LLaVA-OneVision and Pixtral-tower LLaVA models with their own processors, offline.

Each ``build_*`` returns ``(model, processor)`` at the sizes of a :class:`~psaguard.testing.llava.TinyLlavaSpec`, on
the tiny word-level tokenizer and chat template; ``save_*`` writes both in Hugging Face format. Processors
whose transformers class needs torchvision (which cannot be installed beside the CPU torch) are rebuilt
from their PIL parts:

* LLaVA-OneVision's ``LlavaOnevisionProcessor`` also takes a video processor, which needs torchvision:
  :class:`TinyOnevisionProcessor` is the same class without it (images and text are processed by
  transformers' own code);
* the Pixtral layout's ``PixtralProcessor`` needs torchvision: its processor is
  :class:`~psaguard.testing.mistral3.TinyPixtralProcessor` without patch merging (``spatial_merge_size=1``),
  the pixtral-12b layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import LlavaOnevisionProcessor

from psaguard.testing.llava import (
    TINY_GRID_PINPOINTS,
    TinyLlavaSpec,
    init_tiny_model,
    save_pretrained_pair,
    tiny_chat_template,
    tiny_text_config,
    tiny_tokenizer,
    tiny_vision_sizes,
)
from psaguard.testing.mistral3 import TinyPixtralProcessor, build_tiny_mistral3_processor

__all__ = [
    "TinyOnevisionProcessor",
    "build_tiny_llava_onevision",
    "build_tiny_llava_pixtral",
    "save_tiny_llava_onevision",
    "save_tiny_llava_pixtral",
]


class TinyOnevisionProcessor(LlavaOnevisionProcessor):
    """``LlavaOnevisionProcessor`` without its video processor (transformers' video processors need torchvision)."""

    # The parameters are spelled out: from_pretrained passes a saved processor's settings by these names.
    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        num_image_tokens: int | None = None,
        vision_feature_select_strategy: str | None = None,
        chat_template: str | None = None,
        image_token: str = "<image>",
        video_token: str = "<video>",
        vision_aspect_ratio: str = "anyres_max_9",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            image_processor,
            tokenizer,
            None,
            num_image_tokens=num_image_tokens,
            vision_feature_select_strategy=vision_feature_select_strategy,
            chat_template=chat_template,
            image_token=image_token,
            video_token=video_token,
            vision_aspect_ratio=vision_aspect_ratio,
            **kwargs,
        )


def build_tiny_llava_onevision(spec: TinyLlavaSpec | None = None) -> tuple[Any, Any]:
    """A tiny ``LlavaOnevisionForConditionalGeneration`` (SigLIP tower, Qwen2 LLM, any-resolution tiles)."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        SiglipVisionConfig,
    )

    spec = spec or TinyLlavaSpec()
    tok = tiny_tokenizer(spec, {"image_token": "<image>", "video_token": "<video>"})
    pinpoints = [list(p) for p in TINY_GRID_PINPOINTS]
    grid = spec.image_size // spec.patch_size
    processor = TinyOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessorPil(
            size={"height": spec.image_size, "width": spec.image_size}, image_grid_pinpoints=pinpoints
        ),
        tokenizer=tok,
        num_image_tokens=grid * grid,
        vision_feature_select_strategy="full",
        chat_template=tiny_chat_template(),
    )
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**tiny_vision_sizes(spec)),
        text_config=tiny_text_config(spec, tok, "qwen2"),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        pad_token_id=tok.pad_token_id,
    )
    return init_tiny_model(LlavaOnevisionForConditionalGeneration, config, tok, spec.seed), processor


def build_tiny_llava_pixtral(spec: TinyLlavaSpec | None = None) -> tuple[Any, TinyPixtralProcessor]:
    """A tiny ``LlavaForConditionalGeneration`` with a Pixtral vision tower (the pixtral-12b hub layout).

    Images keep their aspect ratio (longest edge ``spec.image_size``), so patch grids are not square; the
    processor writes ``[IMG]`` per patch, ``[IMG_BREAK]`` after each row and ``[IMG_END]`` last.
    """
    from transformers import LlavaConfig, LlavaForConditionalGeneration, PixtralVisionConfig

    spec = spec or TinyLlavaSpec()
    processor = build_tiny_mistral3_processor(spec, spatial_merge_size=1)
    tok = processor.tokenizer
    vision = PixtralVisionConfig(**tiny_vision_sizes(spec), head_dim=spec.vision_hidden // spec.heads)
    config = LlavaConfig(
        vision_config=vision,
        text_config=tiny_text_config(spec, tok),
        image_token_id=processor.image_token_id,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        pad_token_id=tok.pad_token_id,
    )
    return init_tiny_model(LlavaForConditionalGeneration, config, tok, spec.seed), processor


def save_tiny_llava_onevision(path: str | Path, spec: TinyLlavaSpec | None = None) -> Path:
    """Build a tiny LLaVA-OneVision and save it to ``path`` (load the processor with ``TinyOnevisionProcessor``)."""
    return save_pretrained_pair(path, *build_tiny_llava_onevision(spec))


def save_tiny_llava_pixtral(path: str | Path, spec: TinyLlavaSpec | None = None) -> Path:
    """Build a tiny Pixtral-tower LLaVA and save it to ``path`` (load the processor with ``TinyPixtralProcessor``)."""
    return save_pretrained_pair(path, *build_tiny_llava_pixtral(spec))
