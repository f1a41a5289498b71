"""A tiny InternVL (InternViT tower, pixel shuffle, MLP projector, Qwen2 LLM) with random weights, and its processor.

The image processor is ``GotOcr2ImageProcessorPil`` with ``crop_to_patches``: an image becomes up to
``max_patches`` tiles on the grid closest to its aspect ratio, plus a thumbnail when there is more than one.
Each tile is ``image_seq_length`` ``<IMG_CONTEXT>`` tokens (the tower's patch grid after a 2x2 pixel
shuffle) and the whole image sits between ``<img>`` and ``</img>``.

``InternVLProcessor`` takes a video processor too, and transformers' video processors need torchvision,
which cannot be installed beside psaguard's CPU torch; :class:`TinyInternVLProcessor` is the same processor
without the video slot (the image and text handling are ``InternVLProcessor``'s own).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from transformers import InternVLProcessor, ProcessorMixin

from psaguard.testing.llava import (
    TinyLlavaSpec,
    init_tiny_model,
    save_pretrained_pair,
    tiny_chat_template,
    tiny_text_config,
    tiny_tokenizer,
    tiny_vision_sizes,
)

__all__ = [
    "INTERNVL_TOKENS",
    "TinyInternVLProcessor",
    "build_tiny_internvl",
    "build_tiny_internvl_processor",
    "save_tiny_internvl",
]

INTERNVL_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
"""The tokenizer attributes ``InternVLProcessor`` reads, with InternVL's token texts."""

# InternVL's pixel shuffle halves each side of the patch grid (config.downsample_ratio).
_DOWNSAMPLE_RATIO = 0.5


class TinyInternVLProcessor(InternVLProcessor):
    """``InternVLProcessor`` for images and text only: no video processor, so no torchvision."""

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        image_seq_length: int = 256,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        # InternVLProcessor.__init__ passes a video processor on; the attributes it sets are set here instead.
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)
        self.image_seq_length = image_seq_length
        self.start_image_token = tokenizer.start_image_token
        self.end_image_token = tokenizer.end_image_token
        self.start_image_token_id = tokenizer.start_image_token_id
        self.end_image_token_id = tokenizer.end_image_token_id
        self.image_token = tokenizer.context_image_token
        self.image_token_id = tokenizer.context_image_token_id
        self.video_token = tokenizer.video_token
        self.multimodal_pattern = re.compile(
            f"(?P<image>{re.escape(self.image_token)})|(?P<video>{re.escape(self.video_token)})"
        )


def build_tiny_internvl_processor(spec: TinyLlavaSpec | None = None, max_patches: int = 4) -> TinyInternVLProcessor:
    """The tiny tokenizer with InternVL's image tokens and a tiling PIL image processor (tiles of
    ``spec.image_size`` pixels, at most ``max_patches`` of them plus the thumbnail)."""
    from transformers import GotOcr2ImageProcessorPil

    spec = spec or TinyLlavaSpec()
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": spec.image_size, "width": spec.image_size}, crop_to_patches=True, max_patches=max_patches
    )
    return TinyInternVLProcessor(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer(spec, INTERNVL_TOKENS),
        image_seq_length=_tokens_per_tile(spec),
        chat_template=tiny_chat_template(INTERNVL_TOKENS["context_image_token"]),
    )


def build_tiny_internvl(
    spec: TinyLlavaSpec | None = None, processor: TinyInternVLProcessor | None = None
):  # -> InternVLForConditionalGeneration
    """A tiny ``InternVLForConditionalGeneration`` with random weights, sized by ``spec``.

    Input and output embeddings are not tied (InternVL ties them by default): tied, a random tiny model only
    repeats its last prompt token, and tests comparing generations would compare nothing.
    """
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig

    spec = spec or TinyLlavaSpec()
    processor = processor or build_tiny_internvl_processor(spec)
    tok = processor.tokenizer
    vision = InternVLVisionConfig(**tiny_vision_sizes(spec))
    config = InternVLConfig(
        vision_config=vision,
        text_config=tiny_text_config(spec, tok, "qwen2"),
        image_token_id=processor.image_token_id,
        image_seq_length=processor.image_seq_length,
        downsample_ratio=_DOWNSAMPLE_RATIO,
        vision_feature_layer=spec.vision_feature_layer,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    return init_tiny_model(InternVLForConditionalGeneration, config, tok, spec.seed)


def save_tiny_internvl(path: str | Path, spec: TinyLlavaSpec | None = None) -> Path:
    """Build a tiny InternVL and its processor and save both to ``path`` (load the processor with
    ``TinyInternVLProcessor.from_pretrained``)."""
    processor = build_tiny_internvl_processor(spec)
    return save_pretrained_pair(path, build_tiny_internvl(spec, processor), processor)


def _tokens_per_tile(spec: TinyLlavaSpec) -> int:
    side = spec.image_size // spec.patch_size
    return int(side * _DOWNSAMPLE_RATIO) ** 2
