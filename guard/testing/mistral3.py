"""A tiny Mistral3 (Pixtral vision tower, patch merger, Mistral LLM) with random weights, and its processor.

transformers' ``PixtralProcessor`` declares a torchvision requirement (its token-count helper imports the
torchvision image processor), and torchvision cannot be installed beside psaguard's CPU torch, so
:class:`TinyPixtralProcessor` is built from the PIL parts: ``PixtralImageProcessorPil`` (aspect-preserving
resize to multiples of the merged patch) and the placeholder layout the Pixtral processor writes, one
``[IMG]`` per merged patch, ``[IMG_BREAK]`` after each row of the grid and ``[IMG_END]`` in place of the
last break. Grids are not square: a 40x56 image becomes 3 x 4 merged patches at the default sizes.

The Pixtral-tower LLaVA (the pixtral-12b hub layout, :func:`build_tiny_llava_pixtral`) uses the same processor
without patch merging (``spatial_merge_size=1``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from transformers import ProcessorMixin

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
    "MISTRAL3_TOKENS",
    "TinyPixtralProcessor",
    "build_tiny_llava_pixtral",
    "build_tiny_mistral3",
    "build_tiny_mistral3_processor",
    "save_tiny_llava_pixtral",
    "save_tiny_mistral3",
]

MISTRAL3_TOKENS = {"image_token": "[IMG]", "image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]"}
"""The tokenizer attribute and text of each image token, as Mistral's own tokenizers name them."""


class TinyPixtralProcessor(ProcessorMixin):
    """The Pixtral processor's text and image handling, without its torchvision requirement.

    Args:
        image_processor: a ``PixtralImageProcessorPil``.
        tokenizer: a tokenizer that knows ``[IMG]``, ``[IMG_BREAK]`` and ``[IMG_END]``.
        patch_size: the vision tower's patch side in pixels.
        spatial_merge_size: patches merged per side by the model's projector (one ``[IMG]`` per merged patch).
        chat_template: the chat template; an image renders as ``[IMG]``.
    """

    text_kwargs: ClassVar[dict[str, str]] = {"return_tensors": "pt"}
    images_kwargs: ClassVar[dict[str, str]] = {"return_tensors": "pt"}

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        patch_size: int = 16,
        spatial_merge_size: int = 1,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)
        self.patch_size = patch_size
        self.spatial_merge_size = spatial_merge_size
        self.image_token = MISTRAL3_TOKENS["image_token"]
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)

    @property
    def image_token_ids(self) -> list[int]:
        return self.tokenizer.convert_tokens_to_ids(list(MISTRAL3_TOKENS.values()))

    @property
    def model_input_names(self) -> list[str]:
        return [*self.tokenizer.model_input_names, *self.image_processor.model_input_names, "image_sizes"]

    def _process_images(self, images: Any, **images_kwargs: Any) -> Any:
        # Resize to multiples of the merged patch, so every merged patch is whole.
        images_kwargs["patch_size"] = self.patch_size * self.spatial_merge_size
        return super()._process_images(images, **images_kwargs)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs: Any) -> str:
        """One ``[IMG]`` per merged patch, a break after each row, ``[IMG_END]`` instead of the last break."""
        step = self.patch_size * self.spatial_merge_size
        height, width = (int(v) for v in image_inputs["image_sizes"][image_idx])
        row = MISTRAL3_TOKENS["image_token"] * (width // step)
        rows = [row + MISTRAL3_TOKENS["image_break_token"]] * (height // step - 1)
        return "".join(rows) + row + MISTRAL3_TOKENS["image_end_token"]


def build_tiny_mistral3_processor(
    spec: TinyLlavaSpec | None = None, spatial_merge_size: int = 2
) -> TinyPixtralProcessor:
    """The tiny word-level tokenizer with the Mistral image tokens and a Pixtral PIL image processor.

    Images are resized so that their longer side is at most ``spec.image_size`` pixels.
    """
    from transformers import PixtralImageProcessorPil

    spec = spec or TinyLlavaSpec()
    image_processor = PixtralImageProcessorPil(
        size={"longest_edge": spec.image_size}, patch_size=spec.patch_size * spatial_merge_size
    )
    return TinyPixtralProcessor(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer(spec, MISTRAL3_TOKENS),
        patch_size=spec.patch_size,
        spatial_merge_size=spatial_merge_size,
        chat_template=tiny_chat_template(MISTRAL3_TOKENS["image_token"]),
    )


def build_tiny_mistral3(
    spec: TinyLlavaSpec | None = None, processor: TinyPixtralProcessor | None = None
):  # -> Mistral3ForConditionalGeneration
    """A tiny ``Mistral3ForConditionalGeneration`` with random weights, sized by ``spec``.

    The output head is not tied to the input embeddings (Mistral3 ties them by default): tied, a random
    tiny model only repeats its last prompt token, and tests comparing generations would compare nothing.
    """
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralVisionConfig

    spec = spec or TinyLlavaSpec()
    processor = processor or build_tiny_mistral3_processor(spec)
    tok = processor.tokenizer
    vision = PixtralVisionConfig(**tiny_vision_sizes(spec), head_dim=spec.vision_hidden // spec.heads)
    config = Mistral3Config(
        vision_config=vision,
        text_config=tiny_text_config(spec, tok, "mistral"),
        image_token_index=processor.image_token_id,
        spatial_merge_size=processor.spatial_merge_size,
        vision_feature_layer=spec.vision_feature_layer,
        tie_word_embeddings=False,
    )
    return init_tiny_model(Mistral3ForConditionalGeneration, config, tok, spec.seed)


def save_tiny_mistral3(path: str | Path, spec: TinyLlavaSpec | None = None) -> Path:
    """Build a tiny Mistral3 and its processor and save both to ``path`` (load the processor with
    ``TinyPixtralProcessor.from_pretrained``)."""
    processor = build_tiny_mistral3_processor(spec)
    return save_pretrained_pair(path, build_tiny_mistral3(spec, processor), processor)


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


def save_tiny_llava_pixtral(path: str | Path, spec: TinyLlavaSpec | None = None) -> Path:
    """Build a tiny Pixtral-tower LLaVA and save it to ``path`` (load the processor with ``TinyPixtralProcessor``)."""
    return save_pretrained_pair(path, *build_tiny_llava_pixtral(spec))
