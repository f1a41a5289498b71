"""Tiny Idefics3 and SmolVLM (SigLIP-style tower over tiles, pixel shuffle, MLP connector, Llama LLM) and processors.

The processors are transformers' own ``Idefics3Processor`` and ``SmolVLMProcessor`` over the PIL
``Idefics3ImageProcessorPil`` / ``SmolVLMImageProcessorPil``: an image is resized so its longest edge is at
most ``2 * image_size``, cut into a grid of ``image_size`` tiles when larger than one tile, and followed by
a global view; the processor writes ``<fake_token_around_image><row_i_col_j>`` + image tokens per tile and
``<fake_token_around_image><global-img>`` + image tokens + ``<fake_token_around_image>`` for the global view.
The processors read a flat list of images as one sample; nest them per prompt. The row/column tags and
``<global-img>`` are added to the tiny tokenizer as special tokens, as the real tokenizers have them.
``SmolVLMProcessor`` also requires a video processor (which needs torchvision, and ``num2words`` for
video prompts), so :class:`TinySmolVLMProcessor` is SmolVLM's processor without the video part: the same
image handling and run text, images only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import SmolVLMProcessor
from transformers.processing_utils import ProcessorMixin

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
    "IDEFICS3_TAGS",
    "TinySmolVLMProcessor",
    "build_tiny_idefics3",
    "build_tiny_idefics3_processor",
    "build_tiny_smolvlm",
    "build_tiny_smolvlm_processor",
    "save_tiny_idefics3",
    "save_tiny_smolvlm",
]

_MAX_GRID = 6  # the processors name tiles up to <row_6_col_6>
IDEFICS3_TAGS = (
    "<fake_token_around_image>",
    "<global-img>",
    "<end_of_utterance>",
    *(f"<row_{i}_col_{j}>" for i in range(1, _MAX_GRID + 1) for j in range(1, _MAX_GRID + 1)),
)
"""Special tokens the processors write around image tokens (and at the end of a turn)."""

_SCALE_FACTOR = 2  # pixel shuffle: 2 x 2 patches per image token


class TinySmolVLMProcessor(SmolVLMProcessor):
    """``SmolVLMProcessor`` for images only: no video processor (torchvision) and no ``num2words``.

    Args:
        image_processor: a ``SmolVLMImageProcessorPil``.
        tokenizer: a tokenizer that knows ``<image>``, ``<fake_token_around_image>``, ``<global-img>`` and the
            ``<row_i_col_j>`` tags.
        image_seq_len: image tokens per tile (the model's pixel-shuffled patch count).
        chat_template: the chat template; an image renders as ``<image>``.
    """

    def __init__(
        self, image_processor: Any, tokenizer: Any, image_seq_len: int = 169, chat_template: str | None = None
    ) -> None:
        # The attributes SmolVLMProcessor.__init__ sets, without its video processor and num2words check.
        self.fake_image_token = getattr(tokenizer, "fake_image_token", "<fake_token_around_image>")
        self.image_token = getattr(tokenizer, "image_token", "<image>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.end_of_utterance_token = getattr(tokenizer, "end_of_utterance_token", "<end_of_utterance>")
        self.global_image_token = getattr(tokenizer, "global_image_token", "<global-img>")
        self.image_seq_len = image_seq_len
        self.video_token = getattr(tokenizer, "video_token", "<video>")
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    def apply_chat_template(self, conversation: Any, chat_template: str | None = None, **kwargs: Any) -> Any:
        """The generic chat template rendering (SmolVLM's own only adds its video processor's frame settings)."""
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)


def _tokenizer(spec: TinyLlavaSpec):  # -> PreTrainedTokenizerFast
    tok = tiny_tokenizer(spec)
    tok.add_tokens(list(IDEFICS3_TAGS), special_tokens=True)
    return tok


def _image_processor_kwargs(spec: TinyLlavaSpec) -> dict:
    return {"size": {"longest_edge": 2 * spec.image_size}, "max_image_size": {"longest_edge": spec.image_size}}


def _image_seq_len(spec: TinyLlavaSpec) -> int:
    return (spec.image_size // spec.patch_size) ** 2 // (_SCALE_FACTOR * _SCALE_FACTOR)


def build_tiny_idefics3_processor(spec: TinyLlavaSpec | None = None):  # -> Idefics3Processor
    """``Idefics3Processor`` over the tiny tokenizer and tiles of ``spec.image_size`` pixels (up to 2 x 2 + global)."""
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor

    spec = spec or TinyLlavaSpec()
    return Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(**_image_processor_kwargs(spec)),
        tokenizer=_tokenizer(spec),
        image_seq_len=_image_seq_len(spec),
        chat_template=tiny_chat_template("<image>"),
    )


def build_tiny_smolvlm_processor(spec: TinyLlavaSpec | None = None) -> TinySmolVLMProcessor:
    """:class:`TinySmolVLMProcessor` over the tiny tokenizer and tiles of ``spec.image_size`` pixels."""
    from transformers import SmolVLMImageProcessorPil

    spec = spec or TinyLlavaSpec()
    return TinySmolVLMProcessor(
        image_processor=SmolVLMImageProcessorPil(**_image_processor_kwargs(spec)),
        tokenizer=_tokenizer(spec),
        image_seq_len=_image_seq_len(spec),
        chat_template=tiny_chat_template("<image>"),
    )


def _config(config_class, vision_config_class, spec: TinyLlavaSpec, tok):
    return config_class(
        vision_config=vision_config_class(**tiny_vision_sizes(spec)),
        text_config=tiny_text_config(spec, tok),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=_SCALE_FACTOR,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
    )


def build_tiny_idefics3(spec: TinyLlavaSpec | None = None, processor=None):  # -> Idefics3ForConditionalGeneration
    """A tiny ``Idefics3ForConditionalGeneration`` with random weights, sized by ``spec``."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3VisionConfig

    spec = spec or TinyLlavaSpec()
    processor = processor or build_tiny_idefics3_processor(spec)
    config = _config(Idefics3Config, Idefics3VisionConfig, spec, processor.tokenizer)
    return init_tiny_model(Idefics3ForConditionalGeneration, config, processor.tokenizer, spec.seed)


def build_tiny_smolvlm(spec: TinyLlavaSpec | None = None, processor=None):  # -> SmolVLMForConditionalGeneration
    """A tiny ``SmolVLMForConditionalGeneration`` with random weights, sized by ``spec``."""
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMVisionConfig

    spec = spec or TinyLlavaSpec()
    processor = processor or build_tiny_smolvlm_processor(spec)
    config = _config(SmolVLMConfig, SmolVLMVisionConfig, spec, processor.tokenizer)
    return init_tiny_model(SmolVLMForConditionalGeneration, config, processor.tokenizer, spec.seed)


def save_tiny_idefics3(path: str | Path, spec: TinyLlavaSpec | None = None) -> Path:
    """Build a tiny Idefics3 and its processor and save both to ``path`` (``AutoProcessor`` loads it)."""
    processor = build_tiny_idefics3_processor(spec)
    return save_pretrained_pair(path, build_tiny_idefics3(spec, processor), processor)


def save_tiny_smolvlm(path: str | Path, spec: TinyLlavaSpec | None = None) -> Path:
    """Build a tiny SmolVLM and its processor and save both to ``path``."""
    processor = build_tiny_smolvlm_processor(spec)
    return save_pretrained_pair(path, build_tiny_smolvlm(spec, processor), processor)
