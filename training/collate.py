"""From examples to a training batch: chat template, standard SFT label masking, images, labels.

Each example becomes the processor's chat-template text with one image placeholder token, tokenized
once. Labels are -100 everywhere except on the assistant answers (teacher forcing), found by character
offsets so that the masking does not depend on how the template spells its turns. The image placeholder
is expanded later, by :func:`psaguard.injection.build_llm_inputs` (shared with guarded generation), once
the number of image embeddings (safety tokens + patches) is known.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from PIL import Image

from psaguard.conversation import with_hint
from psaguard.errors import InvalidImageError
from psaguard.images.decode import image_size, load_image
from psaguard.injection import IGNORE_INDEX
from psaguard.tokenization import pad_token_id, render_chat, tokenizer_of
from psaguard.training.data import Example

__all__ = ["IGNORE_INDEX", "Batch", "Collator", "combine_images", "load_example_image", "pad_batch"]


@dataclass
class Batch:
    """A padded (right-padded) training batch with one image per example.

    ``image_inputs`` holds what the backbone's preprocessing returns besides ``pixel_values`` (its
    ``image_input_names``, e.g. LLaVA-NeXT's ``image_sizes``); the vision pass takes both.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor
    level: torch.Tensor
    type: torch.Tensor
    prompts: list[str]
    image_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    responses: list[str] = field(default_factory=list)
    """Each example's last answer (the response head's query after the prompt)."""
    response_level: torch.Tensor | None = None
    """Response-head labels, IGNORE_INDEX on rows that do not label their answer; None when no row does."""
    response_type: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def to(self, device: torch.device | str) -> Batch:
        """A copy with every tensor on ``device``."""
        moved = {
            f.name: value.to(device) if isinstance(value := getattr(self, f.name), torch.Tensor) else value
            for f in fields(self)
        }
        moved["image_inputs"] = {name: tensor.to(device) for name, tensor in self.image_inputs.items()}
        return Batch(**moved)


def _response_labels(examples: Sequence[Example]) -> dict[str, Any]:
    """The batch's response fields: answers and labels (IGNORE_INDEX where a row labels none)."""
    if not any(e.has_response_labels for e in examples):
        return {"responses": [e.response for e in examples]}

    def column(values: list[int | None]) -> torch.Tensor:
        return torch.tensor([IGNORE_INDEX if v is None else v for v in values], dtype=torch.long)

    return {
        "responses": [e.response for e in examples],
        "response_level": column([e.response_level for e in examples]),
        "response_type": column([e.response_type for e in examples]),
    }


class Collator:
    """Turns a list of :class:`Example` into a :class:`Batch`.

    Args:
        processor: The model's processor (tokenizer with a chat template, image processor).
        image_token_id: Id of the image placeholder token in the language model's input.
        preprocess: Maps a list of RGB images to ``{"pixel_values": ..., **image_inputs}`` (the backbone's
            preprocessing; LLaVA-NeXT adds ``image_sizes``).
        max_length: Text tokens kept per example; longer examples lose the end of their answer.
        max_image_pixels: Largest image decoded.
        hint: Maps an example to the safety hint appended to its last user turn (or None), e.g.
            :func:`psaguard.training.hints.label_hinter`; the batch's ``prompts`` (what the head reads) stay
            without it.
    """

    def __init__(
        self,
        processor: Any,
        image_token_id: int,
        preprocess: Callable[[list[Image.Image]], dict[str, torch.Tensor]],
        max_length: int = 2048,
        max_image_pixels: int = 40_000_000,
        hint: Callable[[Example], str | None] | None = None,
    ) -> None:
        self.processor = processor
        self.tokenizer = tokenizer_of(processor)
        self.image_token_id = image_token_id
        self.preprocess = preprocess
        self.max_length = max_length
        self.max_image_pixels = max_image_pixels
        self.hint = hint
        self.pad_id = pad_token_id(self.tokenizer)

    def __call__(self, examples: Sequence[Example]) -> Batch:
        encoded = [self.encode(example) for example in examples]
        # A harmful answer is never a language-model target.
        targets = [labels if (e.response_level or 0) == 0 else None for e, (_, labels) in zip(examples, encoded)]
        input_ids, labels, attention_mask = pad_batch([ids for ids, _ in encoded], targets, self.pad_id)
        images = [load_example_image(example, self.max_image_pixels) for example in examples]
        pixels = dict(self.preprocess(images))
        return Batch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            pixel_values=pixels.pop("pixel_values"),
            level=torch.tensor([e.level for e in examples], dtype=torch.long),
            type=torch.tensor([e.type for e in examples], dtype=torch.long),
            prompts=[e.prompt for e in examples],
            image_inputs=pixels,
            **_response_labels(examples),
        )

    def encode(self, example: Example) -> tuple[list[int], list[int]]:
        """(input ids, labels) of one example; the answers are labelled, everything else is -100."""
        messages = example.messages()
        if self.hint is not None and (hint := self.hint(example)):
            messages = with_hint(messages, hint)
        full = self._render(messages, add_generation_prompt=False)
        spans = self._answer_spans(example, messages, full)
        encoding = self.tokenizer(full, add_special_tokens=True, return_offsets_mapping=True)
        ids = list(encoding["input_ids"])
        labels = _label_spans(ids, encoding["offset_mapping"], spans)
        self._append_eos(ids, labels)
        self._check_placeholder(example, ids)
        ids, labels = ids[: self.max_length], labels[: self.max_length]
        if all(label == IGNORE_INDEX for label in labels):
            raise example.error(f"no answer token is left within max_length={self.max_length}")
        return ids, labels

    def _answer_spans(self, example: Example, messages: list[dict[str, Any]], full: str) -> list[tuple[int, int]]:
        """(start, end) character offsets of each answer in the rendered conversation ``full``."""
        spans = []
        for turn in range(len(example.turns)):
            start = self._render(messages[: 2 * turn + 1], add_generation_prompt=True)
            end = self._render(messages[: 2 * turn + 2], add_generation_prompt=False)
            if not (full.startswith(end) and end.startswith(start)):
                # Masking by character offsets needs each turn's text to extend the previous one.
                raise example.error("the chat template does not render the conversation turn by turn")
            spans.append((len(start), len(end)))
        return spans

    def _append_eos(self, ids: list[int], labels: list[int]) -> None:
        eos = self.tokenizer.eos_token_id
        if eos is not None and eos not in labels[_last_labelled_run(labels) :]:
            # Templates such as llava-1.5's end the answer without EOS; without it the model never learns to stop.
            ids.append(eos)
            labels.append(eos)

    def _check_placeholder(self, example: Example, ids: list[int]) -> None:
        """One image placeholder, within ``max_length``."""
        if ids.count(self.image_token_id) != 1:
            raise example.error(
                f"the chat template produced {ids.count(self.image_token_id)} image placeholders instead of 1"
            )
        if ids.index(self.image_token_id) >= self.max_length:
            raise example.error(f"the image placeholder lies beyond max_length={self.max_length} tokens")

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        return render_chat(self.processor, messages, add_generation_prompt=add_generation_prompt)


def pad_batch(
    ids: Sequence[Sequence[int] | torch.Tensor], labels: Sequence[Sequence[int] | torch.Tensor | None], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, labels, attention_mask)`` of token rows and their labels (None: no target)."""
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    padded = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for index, (row, row_labels) in enumerate(zip(ids, labels)):
        input_ids[index, : len(row)] = torch.as_tensor(row)
        if row_labels is not None:
            padded[index, : len(row)] = torch.as_tensor(row_labels)
        attention_mask[index, : len(row)] = 1
    return input_ids, padded, attention_mask


def _label_spans(ids: list[int], offsets: Sequence[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Each token's id where it starts inside an answer span (and covers a character), else -100."""
    return [
        token if stop > begin and any(lo <= begin < hi for lo, hi in spans) else IGNORE_INDEX
        for token, (begin, stop) in zip(ids, offsets)
    ]


def _last_labelled_run(labels: list[int]) -> int:
    """Start index of the last run of labelled positions."""
    index = len(labels)
    while index > 0 and labels[index - 1] == IGNORE_INDEX:
        index -= 1
    while index > 0 and labels[index - 1] != IGNORE_INDEX:
        index -= 1
    return index


def load_example_image(example: Example, max_pixels: int = 40_000_000) -> Image.Image:
    """The example's image; several are placed side by side, as the paper does with '<split>'.

    ``max_pixels`` bounds the result: with several images, their canvas is measured from the files' headers
    before any of them is decoded (eight 6300 x 6300 PNGs of 118 KB each would otherwise decode 2.4 GB first).
    """
    paths = example.images
    try:
        sizes = [image_size(path, max_pixels) for path in paths] if len(paths) > 1 else []
        _check_canvas(sizes, max_pixels)
        images: list[Image.Image] = []
        for path in paths:
            images.append(load_image(path, max_pixels))
            # Decoded sizes may differ from the headers' (GIF frames, an EXIF chunk after a PNG's pixels):
            # checked as each image arrives, so at most one image past the limit is ever decoded.
            _check_canvas([image.size for image in images] + sizes[len(images) :], max_pixels)
    except InvalidImageError as err:
        raise example.error(str(err)) from err
    return combine_images(images)


def _canvas_size(sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """(width, height) of the canvas :func:`combine_images` pastes images of ``sizes`` on."""
    return sum(width for width, _ in sizes), max(height for _, height in sizes)


def _check_canvas(sizes: Sequence[tuple[int, int]], max_pixels: int) -> None:
    if not sizes:
        return
    width, height = _canvas_size(sizes)
    if width * height > max_pixels:
        raise InvalidImageError(
            f"the images placed side by side make {width}x{height} pixels, over the limit of {max_pixels} pixels"
        )


def combine_images(images: Sequence[Image.Image]) -> Image.Image:
    """One image, or several pasted side by side on a white canvas (top-aligned)."""
    if len(images) == 1:
        return images[0]
    canvas = Image.new("RGB", _canvas_size([image.size for image in images]), "white")
    left = 0
    for image in images:
        canvas.paste(image, (left, 0))
        left += image.width
    return canvas
