"""Building the language model's input, for guarded generation and for training: image slots, safety tokens.

Each image is one placeholder token in a prompt row. :func:`build_llm_inputs` widens it into a run of
``N + P`` placeholder ids (``N`` = ``llm_tokens``, ``P`` = the model's image embeddings) and pairs the
row with ``cat(llm_tokens, image_embeds)`` per image, so the model scatters both into those positions, as
the paper places its LLM-side safety tokens right before each image's embeddings (§2.3). The features are
handed to the model as ``mm_encoder_outputs``: in generation they come from the guard's one vision pass,
so the model never runs its vision tower again; in training the scatter keeps the graph, so the LM loss
reaches ``llm_tokens`` (their only training signal).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from psaguard.errors import InvalidInputError, InvalidPromptError

__all__ = ["IGNORE_INDEX", "LlmInputs", "build_llm_inputs", "collapse_image_runs", "tokenize_prompt"]


IGNORE_INDEX = -100
"""Label of positions without loss (prompt, image, padding); the default of PyTorch's cross-entropy."""


@dataclass(frozen=True)
class LlmInputs:
    """A padded batch ready for ``model(**inputs.model_kwargs())`` or ``model.generate(...)``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    image_features: list[torch.Tensor]
    prompt_lengths: list[int]
    labels: torch.Tensor | None = None

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``forward`` or ``generate``: ids, mask, the image features (and labels)."""
        kwargs = {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=self.image_features)},
        }
        return kwargs if self.labels is None else {**kwargs, "labels": self.labels}


def tokenize_prompt(tokenizer: Any, text: str, image_token_id: int, num_images: int) -> list[int]:
    """Token ids of a rendered prompt holding exactly one image placeholder per image.

    Tokenized like the model's processor tokenizes its text (special tokens added by the tokenizer's own
    rules). A count mismatch means the prompt text spells the placeholder itself, which would shift every
    image, so it is refused.
    """
    ids = list(tokenizer(text)["input_ids"])
    found = ids.count(image_token_id)
    if found != num_images:
        raise InvalidPromptError(
            f"the rendered prompt holds {found} image placeholders for {num_images} images; prompt text must "
            "not spell the image token"
        )
    return ids


def collapse_image_runs(
    rows: Sequence[Sequence[int]], image_token_id: int, image_lengths: Sequence[int]
) -> list[list[int]]:
    """Turn each image's run of placeholders (processor output) back into one placeholder per image.

    A processor writes ``image_lengths[i]`` placeholders for image ``i`` (images in order across the rows;
    lengths differ between images in any-resolution families), and a row's adjacent images form one run.
    Every run must hold exactly the next images, and every image must be used; otherwise the ids and the
    images do not belong together.
    """
    collapsed: list[list[int]] = []
    image = 0
    for ids in rows:
        out: list[int] = []
        run = 0
        for token in [*ids, None]:
            if token == image_token_id:
                run += 1
                continue
            if run:
                count = _images_in_run(run, image_lengths, image)
                out.extend([image_token_id] * count)
                image, run = image + count, 0
            if token is not None:
                out.append(token)
        collapsed.append(out)
    if image != len(image_lengths):
        raise InvalidInputError(f"input_ids hold {image} images but pixel_values {len(image_lengths)}")
    return collapsed


def _images_in_run(run: int, image_lengths: Sequence[int], first: int) -> int:
    """How many images, from ``first`` on, fill a run of ``run`` placeholders exactly."""
    count, left = 0, run
    while left > 0 and first + count < len(image_lengths):
        left -= image_lengths[first + count]
        count += 1
    if left != 0:
        raise InvalidInputError(
            f"a run of {run} image tokens does not match the token counts of the next images "
            f"{list(image_lengths[first : first + count])}: input_ids and pixel_values do not belong together"
        )
    return count


def build_llm_inputs(
    rows: Sequence[Sequence[int]],
    image_embeds: Sequence[torch.Tensor],
    *,
    image_token_id: int,
    pad_token_id: int,
    llm_tokens: torch.Tensor | None,
    labels: Sequence[Sequence[int]] | None = None,
    padding_side: Literal["left", "right"] = "left",
    device: torch.device | str = "cpu",
) -> LlmInputs:
    """Expand image placeholders and pair them with ``[llm_tokens; image_embeds]``, padding the rows.

    Generation and training both build the model's input here, so the safety tokens sit where the model
    was trained to see them. Gradients flow from the features into ``llm_tokens`` and ``image_embeds``.

    Args:
        rows: Prompt token ids, one placeholder per image, images in order across rows.
        image_embeds: One ``(P, D)`` tensor per image, from the model's own projector.
        image_token_id: The model's image placeholder id.
        pad_token_id: Id used for padding (masked out).
        llm_tokens: ``(1, N, D)`` safety tokens placed before each image's embeddings, or None for none.
        labels: Per-row labels aligned with ``rows`` (training); image slots and padding get -100.
        padding_side: "left" for generation (new tokens are appended on the right of every row), "right"
            for training.
        device: Where the id, mask and label tensors go.
    """
    if sum(row.count(image_token_id) for row in map(list, rows)) != len(image_embeds):
        raise InvalidInputError(f"{len(image_embeds)} image embeddings do not match the placeholders in the rows")
    prefix = None if llm_tokens is None else llm_tokens.reshape(-1, llm_tokens.shape[-1])
    features = [emb if prefix is None else torch.cat([prefix.to(emb.device, emb.dtype), emb]) for emb in image_embeds]
    slots = iter(len(feature) for feature in features)
    expanded: list[list[int]] = []
    targets: list[list[int]] = []
    # Without labels the ids stand in for them, and the labels built from them are dropped.
    for row, row_labels in zip(rows, rows if labels is None else labels, strict=True):
        ids: list[int] = []
        row_targets: list[int] = []
        for token, label in zip(row, row_labels, strict=True):
            width = next(slots) if token == image_token_id else 1
            ids.extend([token] * width)
            row_targets.extend([IGNORE_INDEX if token == image_token_id else label] * width)
        expanded.append(ids)
        targets.append(row_targets)
    return LlmInputs(
        input_ids=_pad(expanded, pad_token_id, padding_side).to(device),
        attention_mask=_pad([[1] * len(row) for row in expanded], 0, padding_side).to(device),
        image_features=features,
        prompt_lengths=[len(row) for row in expanded],
        labels=None if labels is None else _pad(targets, IGNORE_INDEX, padding_side).to(device),
    )


def _pad(rows: Sequence[Sequence[int]], value: int, side: Literal["left", "right"]) -> torch.Tensor:
    """A (len(rows), longest row) long tensor of the rows, filled with ``value`` on ``side``."""
    width = max(len(row) for row in rows)
    padded = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        start = width - len(row) if side == "left" else 0
        padded[i, start : start + len(row)] = torch.tensor(row, dtype=torch.long)
    return padded
