"""Tiny random models of the further LLaVA-style families, with their own processors, built offline.

Each builder returns ``(model, processor)`` from the sizes of a :class:`~psaguard.tiny.TinyLlavaSpec`, on
the same word-level tokenizer and chat template as the LLaVA tiny model (the template writes the family's
image placeholder). Image processors are the PIL-based ones transformers ships (torchvision cannot be
installed beside the CPU torch). transformers' ``PixtralProcessor`` requires torchvision, so the Pixtral
layout's processor is :class:`TinyPixtralProcessor`, built from the PIL image processor and the same text
expansion. LLaVA-OneVision's processor also takes a video processor, which needs
torchvision; its tiny processor is the same processor class without one (images and text are processed by
transformers' own code).
"""

from __future__ import annotations

from typing import Any

import torch

from psaguard.tiny import (
    TINY_GRID_PINPOINTS,
    TinyLlavaSpec,
    _ready,
    _text_config,
    _tiny_tokenizer,
    _vision_config,
    build_tiny_processor,
    chat_template,
)

__all__ = [
    "PIXTRAL_IMAGE_TOKENS",
    "TinyPixtralProcessor",
    "build_tiny_llava_onevision",
    "build_tiny_llava_pixtral",
    "build_tiny_vipllava",
]

PIXTRAL_IMAGE_TOKENS = ("[IMG]", "[IMG_BREAK]", "[IMG_END]")
"""The Pixtral processor's image, row-break and end-of-image tokens."""


def build_tiny_vipllava(spec: TinyLlavaSpec | None = None) -> tuple[Any, Any]:
    """A tiny ``VipLlavaForConditionalGeneration`` (features of two CLIP layers) and its ``LlavaProcessor``."""
    from transformers import VipLlavaConfig, VipLlavaForConditionalGeneration

    spec = spec or TinyLlavaSpec()
    processor = build_tiny_processor(spec)
    tok = processor.tokenizer
    config = VipLlavaConfig(
        vision_config=_vision_config(spec),
        text_config=_text_config(spec, tok),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=[-2, -1],
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    return _ready(VipLlavaForConditionalGeneration(config), tok), processor


def build_tiny_llava_onevision(spec: TinyLlavaSpec | None = None) -> tuple[Any, Any]:
    """A tiny ``LlavaOnevisionForConditionalGeneration`` (SigLIP tower, Qwen2 LLM, any-resolution tiles)."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        LlavaOnevisionProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    spec = spec or TinyLlavaSpec()
    tok = _tiny_tokenizer(spec, image_tokens=("<video>",))
    pinpoints = [list(p) for p in TINY_GRID_PINPOINTS]
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": spec.image_size, "width": spec.image_size}, image_grid_pinpoints=pinpoints
    )
    grid = spec.image_size // spec.patch_size
    processor = _image_only(LlavaOnevisionProcessor)(
        image_processor=image_processor,
        tokenizer=tok,
        num_image_tokens=grid * grid,
        vision_feature_select_strategy="full",
        chat_template=chat_template(),
    )
    llama = _text_config(spec, tok)
    text = Qwen2Config(
        hidden_size=llama.hidden_size,
        intermediate_size=llama.intermediate_size,
        num_hidden_layers=llama.num_hidden_layers,
        num_attention_heads=llama.num_attention_heads,
        num_key_value_heads=llama.num_key_value_heads,
        vocab_size=llama.vocab_size,
        max_position_embeddings=llama.max_position_embeddings,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    vision = SiglipVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_hidden * 2,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    return _ready(LlavaOnevisionForConditionalGeneration(config), tok), processor


def _image_only(processor_class: type) -> type:
    """``processor_class`` without its video processor (transformers' video processors need torchvision).

    The subclass declares only the image processor and tokenizer, and passes None for the video processor,
    so images and text are processed exactly as by the family's processor.
    """

    class ImageOnlyProcessor(processor_class):  # type: ignore[misc, valid-type]
        def __init__(self, image_processor: Any = None, tokenizer: Any = None, **kwargs: Any) -> None:
            super().__init__(image_processor, tokenizer, None, **kwargs)

    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = f"ImageOnly{processor_class.__name__}"
    return ImageOnlyProcessor


class TinyPixtralProcessor:
    """A PIL-only stand-in for transformers' ``PixtralProcessor`` (which requires torchvision).

    Images go through ``PixtralImageProcessorPil`` (longest edge resized, sides multiples of the patch);
    each ``[IMG]`` in the text becomes the image's run exactly as ``PixtralProcessor.replace_image_token``
    writes it: per patch row ``[IMG] * columns + [IMG_BREAK]``, the last break replaced by ``[IMG_END]``.
    """

    def __init__(self, image_processor: Any, tokenizer: Any, patch_size: int, chat_template: str) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.patch_size = patch_size
        self.chat_template = chat_template
        self.image_token, self.image_break_token, self.image_end_token = PIXTRAL_IMAGE_TOKENS
        self.image_token_id, self.image_break_token_id, self.image_end_token_id = (
            tokenizer.convert_tokens_to_ids(token) for token in PIXTRAL_IMAGE_TOKENS
        )

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any:
        return self.tokenizer.apply_chat_template(conversation, chat_template=self.chat_template, **kwargs)

    def __call__(self, images: Any = None, text: Any = None, return_tensors: str = "pt", **kwargs: Any) -> Any:
        from transformers import BatchFeature

        texts = [text] if isinstance(text, str) else list(text or [])
        image_inputs = {} if images is None else dict(self.image_processor(images=images, return_tensors="pt"))
        sizes = iter(image_inputs.get("image_sizes", []))
        expanded = []
        for sample in texts:
            pieces = sample.split(self.image_token)
            out = pieces[0]
            for piece in pieces[1:]:
                out += self._run(*(int(side) for side in next(sizes))) + piece
            expanded.append(out)
        encoded = dict(self.tokenizer(expanded, return_tensors=return_tensors, padding=True)) if texts else {}
        return BatchFeature({**encoded, **image_inputs}, tensor_type=return_tensors)

    def _run(self, height: int, width: int) -> str:
        rows = [[self.image_token] * (width // self.patch_size) + [self.image_break_token]] * (
            height // self.patch_size
        )
        tokens = [token for row in rows for token in row]
        tokens[-1] = self.image_end_token
        return "".join(tokens)


def build_tiny_llava_pixtral(spec: TinyLlavaSpec | None = None) -> tuple[Any, Any]:
    """A tiny ``LlavaForConditionalGeneration`` with a Pixtral vision tower (the pixtral-12b hub layout).

    Images keep their aspect ratio (longest edge ``spec.image_size``), so the patch grid is not square, and
    the ``PixtralProcessor`` writes ``[IMG]`` per patch, ``[IMG_BREAK]`` after each row and ``[IMG_END]``
    last.
    """
    from transformers import LlavaConfig, LlavaForConditionalGeneration, PixtralImageProcessorPil, PixtralVisionConfig

    spec = spec or TinyLlavaSpec()
    tok = _tiny_tokenizer(spec, image_tokens=PIXTRAL_IMAGE_TOKENS)
    image_processor = PixtralImageProcessorPil(
        size={"longest_edge": spec.image_size}, patch_size={"height": spec.patch_size, "width": spec.patch_size}
    )
    processor = TinyPixtralProcessor(image_processor, tok, spec.patch_size, chat_template("[IMG]"))
    vision = PixtralVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_hidden * 2,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.heads,
        head_dim=spec.vision_hidden // spec.heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=_text_config(spec, tok),
        image_token_id=tok.convert_tokens_to_ids("[IMG]"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    return _ready(LlavaForConditionalGeneration(config), tok), processor
