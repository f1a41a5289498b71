"""Tiny Qwen2-VL, Qwen2.5-VL and Qwen3-VL (native-resolution ViT, 2 x 2 patch merger, M-RoPE LLM) and processors.

Qwen2.5-VL's tower adds window attention (patches regrouped by window inside the tower), Qwen3-VL DeepStack
features (intermediate tower blocks added to early LLM layers). The processors require a video processor,
which needs torchvision, so :class:`TinyQwen2VLProcessor`, :class:`TinyQwen2_5_VLProcessor` and
:class:`TinyQwen3VLProcessor` are the families' processors without the video part:
``Qwen2VLImageProcessorPil`` (resize to multiples of ``patch_size * merge_size`` within a pixel budget,
patches flattened in 2 x 2 merge blocks, ``image_grid_thw`` per image) and the same text handling
(``<|image_pad|>`` repeated once per merged patch, ``mm_token_type_ids`` marking them). The chat
template writes ``<|vision_start|><|image_pad|><|vision_end|>`` per image, as Qwen2-VL's does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor, Qwen3VLProcessor
from transformers.processing_utils import ProcessorMixin

from psaguard.testing.llava import (
    TinyLlavaSpec,
    init_tiny_model,
    save_pretrained_pair,
    tiny_chat_template,
    tiny_text_config,
    tiny_tokenizer,
)

__all__ = [
    "QWEN2_VL_TOKENS",
    "TinyQwen2VLProcessor",
    "TinyQwen2_5_VLProcessor",
    "TinyQwen3VLProcessor",
    "build_tiny_qwen2_5_vl",
    "build_tiny_qwen2_5_vl_processor",
    "build_tiny_qwen2_vl",
    "build_tiny_qwen2_vl_processor",
    "build_tiny_qwen3_vl",
    "build_tiny_qwen3_vl_processor",
    "init_images_only_processor",
    "mrope_section_for",
    "save_tiny_qwen2_5_vl",
    "save_tiny_qwen2_vl",
    "save_tiny_qwen3_vl",
    "tiny_grid_config",
    "tiny_grid_processor",
]

QWEN2_VL_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}
"""Qwen2-VL's vision tokens, by the tokenizer attribute names its processor reads."""

_MERGE = 2  # the patch merger's 2 x 2 blocks: one <|image_pad|> per block


class TinyQwen2VLProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` for images only: no video processor (which needs torchvision).

    Args:
        image_processor: a ``Qwen2VLImageProcessorPil``.
        tokenizer: a tokenizer that knows Qwen2-VL's vision tokens (:data:`QWEN2_VL_TOKENS`).
        chat_template: the chat template; an image renders as ``<|vision_start|><|image_pad|><|vision_end|>``.
    """

    def __init__(self, image_processor: Any, tokenizer: Any, chat_template: str | None = None) -> None:
        init_images_only_processor(self, image_processor, tokenizer, chat_template)


class TinyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` for images only; arguments as :class:`TinyQwen2VLProcessor`'s."""

    def __init__(self, image_processor: Any, tokenizer: Any, chat_template: str | None = None) -> None:
        init_images_only_processor(self, image_processor, tokenizer, chat_template)


class TinyQwen3VLProcessor(Qwen3VLProcessor):
    """``Qwen3VLProcessor`` for images only; arguments as :class:`TinyQwen2VLProcessor`'s."""

    def __init__(self, image_processor: Any, tokenizer: Any, chat_template: str | None = None) -> None:
        init_images_only_processor(self, image_processor, tokenizer, chat_template)
        self.vision_start_token = tokenizer.vision_start_token
        self.vision_end_token = tokenizer.vision_end_token
        self.vision_start_token_id = tokenizer.vision_start_token_id
        self.vision_end_token_id = tokenizer.vision_end_token_id


def init_images_only_processor(
    processor: ProcessorMixin, image_processor: Any, tokenizer: Any, chat_template: str | None
) -> None:
    """The attributes the Qwen-VL (and GLM-4V) processors' ``__init__`` set, without their video processor."""
    processor.image_token = tokenizer.image_token
    processor.video_token = tokenizer.video_token
    processor.image_token_id = tokenizer.image_token_id
    processor.video_token_id = tokenizer.video_token_id
    ProcessorMixin.__init__(processor, image_processor, tokenizer, chat_template=chat_template)


def build_tiny_qwen2_vl_processor(
    spec: TinyLlavaSpec | None = None, processor_class: type = TinyQwen2VLProcessor
) -> TinyQwen2VLProcessor:
    """:class:`TinyQwen2VLProcessor` over the tiny tokenizer: images of ``4 x 4`` to ``8 x 8`` merged patches."""
    from transformers import Qwen2VLImageProcessorPil

    placeholder = ("vision_start_token", "image_token", "vision_end_token")
    return tiny_grid_processor(spec, processor_class, Qwen2VLImageProcessorPil, QWEN2_VL_TOKENS, placeholder)


def tiny_grid_processor(
    spec: TinyLlavaSpec | None,
    processor_class: type,
    image_processor_class: type,
    tokens: dict[str, str],
    placeholder: tuple[str, ...],
) -> Any:
    """A processor of a Qwen2-VL-style family: patches in 2 x 2 merge blocks, 4 x 4 to 8 x 8 merged patches.

    ``tokens`` are the family's vision tokens (tokenizer attribute -> text); an image renders as the
    concatenation of the ``placeholder`` tokens.
    """
    spec = spec or TinyLlavaSpec()
    unit = spec.patch_size * _MERGE
    image_processor = image_processor_class(
        patch_size=spec.patch_size,
        merge_size=_MERGE,
        temporal_patch_size=2,
        size={"shortest_edge": (4 * unit) ** 2, "longest_edge": (8 * unit) ** 2},
    )
    return processor_class(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer(spec, tokens),
        chat_template=tiny_chat_template("".join(tokens[k] for k in placeholder)),
    )


def tiny_grid_config(
    config_class: type,
    spec: TinyLlavaSpec,
    tok: Any,
    text_type: str,
    vision: dict[str, Any],
    tokens: dict[str, str] = QWEN2_VL_TOKENS,
    **rope: Any,
) -> Any:
    """The config of a tiny Qwen-VL-style model: a 2 x 2 merging tower with ``vision`` sizes, an M-RoPE LLM.

    ``tokens`` (tokenizer attribute -> text) become the config's ``<attribute>_id`` fields; ``rope`` updates
    the language model's rope parameters.
    """
    head_dim = spec.text_hidden // spec.heads
    rope_parameters = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section_for(head_dim)}
    text = tiny_text_config(spec, tok, text_type, head_dim=head_dim, rope_parameters={**rope_parameters, **rope})
    tower = {
        "depth": spec.vision_layers,
        "num_heads": spec.heads,
        "patch_size": spec.patch_size,
        "spatial_merge_size": _MERGE,
        "temporal_patch_size": 2,
    }
    ids = {f"{name}_id": tok.convert_tokens_to_ids(text) for name, text in tokens.items()}
    return config_class(vision_config={**tower, **vision}, text_config=text, tie_word_embeddings=False, **ids)


def _vit_sizes(spec: TinyLlavaSpec) -> dict[str, int]:
    """The tower widths of Qwen2.5-VL and Qwen3-VL (``hidden_size`` is the tower's, ``out_hidden_size`` the LLM's)."""
    return {
        "hidden_size": spec.vision_hidden,
        "out_hidden_size": spec.text_hidden,
        "intermediate_size": spec.vision_hidden * 2,
    }


def build_tiny_qwen2_vl(spec: TinyLlavaSpec | None = None, processor=None):  # -> Qwen2VLForConditionalGeneration
    """A tiny ``Qwen2VLForConditionalGeneration`` with random weights, sized by ``spec``."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    spec = spec or TinyLlavaSpec()
    tok = (processor or build_tiny_qwen2_vl_processor(spec)).tokenizer
    vision = {"embed_dim": spec.vision_hidden, "hidden_size": spec.text_hidden, "mlp_ratio": 2}
    config = tiny_grid_config(Qwen2VLConfig, spec, tok, "qwen2_vl_text", vision)
    # Seed offset: drawn from spec.seed itself (0 by default), the random model answers one of the test
    # images with a single repeated token, which would make comparisons of its answers weak.
    return init_tiny_model(Qwen2VLForConditionalGeneration, config, tok, spec.seed + 1)


def build_tiny_qwen2_5_vl_processor(spec: TinyLlavaSpec | None = None) -> TinyQwen2_5_VLProcessor:
    """:class:`TinyQwen2_5_VLProcessor`: Qwen2.5-VL uses Qwen2-VL's image processor and placeholder layout."""
    return build_tiny_qwen2_vl_processor(spec, TinyQwen2_5_VLProcessor)  # type: ignore[return-value]


def build_tiny_qwen2_5_vl(spec: TinyLlavaSpec | None = None, processor=None):  # -> Qwen2_5_VLForConditionalGeneration
    """A tiny ``Qwen2_5_VLForConditionalGeneration``: windows of 2 x 2 merged patches, the last block global."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    spec = spec or TinyLlavaSpec()
    tok = (processor or build_tiny_qwen2_5_vl_processor(spec)).tokenizer
    vision = {
        **_vit_sizes(spec),
        "window_size": 2 * _MERGE * spec.patch_size,
        "fullatt_block_indexes": [spec.vision_layers - 1],
    }
    config = tiny_grid_config(Qwen2_5_VLConfig, spec, tok, "qwen2_5_vl_text", vision)
    return init_tiny_model(Qwen2_5_VLForConditionalGeneration, config, tok, spec.seed)


def save_tiny_qwen2_5_vl(path: str | Path, spec: TinyLlavaSpec | None = None) -> Path:
    """Build a tiny Qwen2.5-VL and its processor and save both to ``path``."""
    processor = build_tiny_qwen2_5_vl_processor(spec)
    return save_pretrained_pair(path, build_tiny_qwen2_5_vl(spec, processor), processor)


def build_tiny_qwen3_vl_processor(spec: TinyLlavaSpec | None = None) -> TinyQwen3VLProcessor:
    """:class:`TinyQwen3VLProcessor`: Qwen3-VL uses Qwen2-VL's image processor and placeholder layout."""
    return build_tiny_qwen2_vl_processor(spec, TinyQwen3VLProcessor)  # type: ignore[return-value]


def build_tiny_qwen3_vl(spec: TinyLlavaSpec | None = None, processor=None):  # -> Qwen3VLForConditionalGeneration
    """A tiny ``Qwen3VLForConditionalGeneration``: DeepStack from the first vision block into the first LLM layer."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    spec = spec or TinyLlavaSpec()
    tok = (processor or build_tiny_qwen3_vl_processor(spec)).tokenizer
    vision = {**_vit_sizes(spec), "num_position_embeddings": 64, "deepstack_visual_indexes": [0]}
    config = tiny_grid_config(Qwen3VLConfig, spec, tok, "qwen3_vl_text", vision, mrope_interleaved=True)
    return init_tiny_model(Qwen3VLForConditionalGeneration, config, tok, spec.seed)


def save_tiny_qwen3_vl(path: str | Path, spec: TinyLlavaSpec | None = None) -> Path:
    """Build a tiny Qwen3-VL and its processor and save both to ``path``."""
    processor = build_tiny_qwen3_vl_processor(spec)
    return save_pretrained_pair(path, build_tiny_qwen3_vl(spec, processor), processor)


def mrope_section_for(head_dim: int) -> list[int]:
    """Rotary frequencies per (temporal, height, width) axis, summing to ``head_dim / 2`` (Qwen2-VL: 16, 24, 24)."""
    half = head_dim // 2
    return [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]


def save_tiny_qwen2_vl(path: str | Path, spec: TinyLlavaSpec | None = None) -> Path:
    """Build a tiny Qwen2-VL and its processor and save both to ``path``."""
    processor = build_tiny_qwen2_vl_processor(spec)
    return save_pretrained_pair(path, build_tiny_qwen2_vl(spec, processor), processor)
