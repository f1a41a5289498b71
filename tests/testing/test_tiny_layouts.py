"""What the tiny processors of the per-family layouts put in the prompt for one image: the layout the family's
language model reads."""

from __future__ import annotations

import numpy as np
from PIL import Image

from psaguard.testing import build_tiny_family

IMAGE_TURN = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what ?"}]}]


def _image(height: int, width: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _image_tokens(processor, image: Image.Image) -> list[str]:
    text = processor.apply_chat_template(IMAGE_TURN, add_generation_prompt=True)
    ids = processor(images=[image], text=[text], return_tensors="pt")["input_ids"][0]
    tokens = processor.tokenizer.convert_ids_to_tokens(ids)
    return tokens[tokens.index("user") + 2 : tokens.index("what")]


def test_mistral3_rows_of_merged_patches_end_in_breaks_and_the_image_in_img_end():
    processor = build_tiny_family("mistral3").processor  # 4 px patches merged 2x2: one [IMG] per 8x8 pixels
    tokens = _image_tokens(processor, _image(40, 56))  # resized to 24 x 32 (longest edge 32, multiples of 8)
    row = ["[IMG]"] * 4
    assert tokens == [*row, "[IMG_BREAK]", *row, "[IMG_BREAK]", *row, "[IMG_END]"]


def test_mistral3_processor_settings_survive_save_and_load(tmp_path):
    processor = build_tiny_family("mistral3").processor
    processor.save_pretrained(tmp_path)
    loaded = type(processor).from_pretrained(tmp_path)
    assert (loaded.patch_size, loaded.spatial_merge_size) == (processor.patch_size, processor.spatial_merge_size)
    assert _image_tokens(loaded, _image(64, 48)) == _image_tokens(processor, _image(64, 48))


def test_qwen2_vl_images_are_wrapped_in_vision_marks_the_template_writes():
    processor = build_tiny_family("qwen2_vl").processor  # 4 px patches merged 2x2
    assert _image_tokens(processor, _image(32, 32)) == ["<|vision_start|>", *["<image>"] * 16, "<|vision_end|>"]


def test_internvl_wraps_tiles_and_thumbnail_in_img_tags():
    processor = build_tiny_family("internvl").processor  # 32 px tiles of 8x8 patches, shuffled to 4x4 tokens
    start, context, end = processor.start_image_token, processor.image_token, processor.end_image_token
    assert _image_tokens(processor, _image(32, 32)) == [start, *[context] * 16, end]
    wide = _image_tokens(processor, _image(32, 64))  # two tiles side by side, plus the thumbnail
    assert wide == [start, *[context] * 16 * 3, end]


def test_aya_vision_expands_the_template_placeholder_into_marked_tiles():
    processor = build_tiny_family("aya_vision").processor
    tile = ["<|IMG_PATCH|>"] * 16
    assert _image_tokens(processor, _image(32, 32)) == [
        "<|START_OF_IMG|>", "TILE", "_", "GLOBAL", *tile, "<|END_OF_IMG|>"
    ]  # fmt: skip
    wide = _image_tokens(processor, _image(32, 64))
    assert wide == [
        "<|START_OF_IMG|>", "TILE", "_", "1", *tile, "TILE", "_", "2", *tile, "TILE", "_", "GLOBAL", *tile,
        "<|END_OF_IMG|>",
    ]  # fmt: skip
    assert "<image>" not in _image_tokens(processor, _image(32, 32))
