"""Building the language model's input, for guarded generation and for training: image runs, safety tokens.

Each image is one placeholder token in a prompt row. :func:`build_llm_inputs` replaces it with the image's
run (an :class:`ImageLayout` from the family adapter: ``P`` image tokens, plus the wrapper or row-break
tokens of families that have them), widened by ``N`` more image tokens for the ``llm_tokens``, and pairs
the row with ``cat(llm_tokens, image_embeds)`` per image, so the model scatters both into those positions,
as the paper places its LLM-side safety tokens right before each image's embeddings (§2.3). The features
reach the model through the adapter's ``model_inputs`` (for LLaVA-style models ``mm_encoder_outputs``): in
generation they come from the guard's one vision pass, so the model never runs its vision tower again; in
training the scatter keeps the graph, so the LM loss reaches ``llm_tokens`` (their only training signal).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from psaguard.errors import InvalidInputError, InvalidPromptError

__all__ = [
    "IGNORE_INDEX",
    "ImageLayout",
    "LlmInputs",
    "build_llm_inputs",
    "collapse_image_runs",
    "features_as_list",
    "features_as_tensor",
    "tokenize_prompt",
]


IGNORE_INDEX = -100
"""Label of positions without loss (prompt, image, padding); the default of PyTorch's cross-entropy."""

ModelImageInputs = Callable[[Sequence[torch.Tensor], torch.Tensor], dict[str, Any]]
"""``(one (L_i, D) feature tensor per image, padded input_ids) -> model keyword arguments``."""


def features_as_list(image_features: Sequence[torch.Tensor], input_ids: torch.Tensor) -> dict[str, Any]:
    """Precomputed image features as LLaVA-style models take them: a list in ``mm_encoder_outputs``."""
    return {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=list(image_features))}}


def features_as_tensor(image_features: Sequence[torch.Tensor], input_ids: torch.Tensor) -> dict[str, Any]:
    """Precomputed image features as models that scatter one tensor take them: ``(1, sum L_i, D)``.

    Such models fill their image positions from the flattened features in order, so
    images of different lengths travel concatenated.
    """
    stacked = torch.cat(list(image_features)).unsqueeze(0)
    return {"mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=stacked)}}


@dataclass(frozen=True)
class ImageLayout:
    """How a batch's images sit in the language model's input (given by the family adapter).

    ``runs[i]`` are image ``i``'s token ids as the model's processor writes them, holding one
    ``image_token_id`` per image embedding; each ``placeholder_id`` in a prompt row stands for the next
    image; ``model_inputs`` hands the features to the model.
    """

    image_token_id: int
    runs: Sequence[Sequence[int]]
    placeholder_id: int | None = None
    model_inputs: ModelImageInputs = field(default=features_as_list)

    @property
    def placeholder(self) -> int:
        """The placeholder id (the image token unless the family's template writes another)."""
        return self.image_token_id if self.placeholder_id is None else self.placeholder_id

    @classmethod
    def plain(cls, image_token_id: int, image_lengths: Sequence[int]) -> ImageLayout:
        """The LLaVA layout: each image is a run of ``image_lengths[i]`` image tokens."""
        return cls(image_token_id=image_token_id, runs=[[image_token_id] * n for n in image_lengths])


@dataclass(frozen=True)
class LlmInputs:
    """A padded batch ready for ``model(**inputs.model_kwargs())`` or ``model.generate(...)``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    image_features: list[torch.Tensor]
    prompt_lengths: list[int]
    labels: torch.Tensor | None = None
    image_inputs: dict[str, Any] = field(default_factory=dict)

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``forward`` or ``generate``: ids, mask, the image inputs (and labels)."""
        kwargs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask, **self.image_inputs}
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


def collapse_image_runs(rows: Sequence[Sequence[int]], layout: ImageLayout) -> list[list[int]]:
    """Turn each image's run (processor output) back into one placeholder per image.

    A processor writes ``layout.runs[i]`` for image ``i`` (images in order across the rows; lengths differ
    between images in any-resolution families). Every image token must lie in exactly the next image's
    run, and every image must be used; otherwise the ids and the images do not belong together.
    """
    collapsed: list[list[int]] = []
    image = 0
    for row in rows:
        ids = list(row)
        out: list[int] = []
        position = 0
        while position < len(ids):
            run = list(layout.runs[image]) if image < len(layout.runs) else None
            if run and ids[position : position + len(run)] == run:
                out.append(layout.placeholder)
                position += len(run)
                image += 1
                continue
            if ids[position] == layout.image_token_id:
                expected = f"{len(run)} tokens of image {image}" if run else "no more images"
                raise InvalidInputError(
                    f"image tokens at position {position} do not match the run of the next image ({expected}): "
                    "input_ids and pixel_values do not belong together"
                )
            out.append(ids[position])
            position += 1
        collapsed.append(out)
    if image != len(layout.runs):
        raise InvalidInputError(f"input_ids hold {image} images but pixel_values {len(layout.runs)}")
    return collapsed


def _check_image_count(
    rows: Sequence[Sequence[int]], image_embeds: Sequence[torch.Tensor], layout: ImageLayout
) -> None:
    """As many image embeddings as image runs and as placeholders in the rows, else :class:`InvalidInputError`."""
    placeholders = sum(list(row).count(layout.placeholder) for row in rows)
    if placeholders != len(image_embeds) or len(layout.runs) != len(image_embeds):
        raise InvalidInputError(
            f"{len(image_embeds)} image embeddings and {len(layout.runs)} image runs do not match the placeholders "
            "in the rows"
        )


def _prefixed(image_embeds: Sequence[torch.Tensor], prefix: torch.Tensor | None) -> list[torch.Tensor]:
    """Each image's features: ``[prefix; embeds]`` (the safety tokens first), or the embeddings alone."""
    if prefix is None:
        return list(image_embeds)
    return [torch.cat([prefix.to(emb.device, emb.dtype), emb]) for emb in image_embeds]


def _expanded_row(
    row: Sequence[int], row_labels: Sequence[int], placeholder: int, runs: Iterator[list[int]]
) -> tuple[list[int], list[int]]:
    """One row with each placeholder replaced by the next image's run, and its labels (-100 over the runs)."""
    ids: list[int] = []
    targets: list[int] = []
    for token, label in zip(row, row_labels, strict=True):
        if token == placeholder:
            run = next(runs)
            ids.extend(run)
            targets.extend([IGNORE_INDEX] * len(run))
        else:
            ids.append(token)
            targets.append(label)
    return ids, targets


def build_llm_inputs(
    rows: Sequence[Sequence[int]],
    image_embeds: Sequence[torch.Tensor],
    *,
    layout: ImageLayout,
    pad_token_id: int,
    llm_tokens: torch.Tensor | None,
    labels: Sequence[Sequence[int]] | None = None,
    padding_side: Literal["left", "right"] = "left",
    device: torch.device | str = "cpu",
) -> LlmInputs:
    """Replace image placeholders by their runs and pair them with ``[llm_tokens; image_embeds]``, padding the rows.

    Generation and training both build the model's input here, so the safety tokens sit where the model
    was trained to see them. Gradients flow from the features into ``llm_tokens`` and ``image_embeds``.

    Args:
        rows: Prompt token ids, one ``layout.placeholder`` per image, images in order across rows.
        image_embeds: One ``(P, D)`` tensor per image, from the model's own projector.
        layout: The images' runs and how the model takes the features (the family adapter's
            ``image_layout``).
        pad_token_id: Id used for padding (masked out).
        llm_tokens: ``(1, N, D)`` safety tokens placed before each image's embeddings, or None for none.
        labels: Per-row labels aligned with ``rows`` (training); image runs and padding get -100.
        padding_side: "left" for generation (new tokens are appended on the right of every row), "right"
            for training.
        device: Where the id, mask and label tensors go.
    """
    placeholder = layout.placeholder
    _check_image_count(rows, image_embeds, layout)
    prefix = None if llm_tokens is None else llm_tokens.reshape(-1, llm_tokens.shape[-1])
    features = _prefixed(image_embeds, prefix)
    extra = 0 if prefix is None else len(prefix)
    # Lazily, so a run is checked when its placeholder is reached.
    runs = (_widened(run, embeds, layout.image_token_id, extra) for run, embeds in zip(layout.runs, image_embeds))
    expanded: list[list[int]] = []
    targets: list[list[int]] = []
    # Without labels the ids stand in for them, and the labels built from them are dropped.
    for row, row_labels in zip(rows, rows if labels is None else labels, strict=True):
        ids, row_targets = _expanded_row(row, row_labels, placeholder, runs)
        expanded.append(ids)
        targets.append(row_targets)
    input_ids = _pad(expanded, pad_token_id, padding_side).to(device)
    return LlmInputs(
        input_ids=input_ids,
        attention_mask=_pad([[1] * len(row) for row in expanded], 0, padding_side).to(device),
        image_features=features,
        prompt_lengths=[len(row) for row in expanded],
        labels=None if labels is None else _pad(targets, IGNORE_INDEX, padding_side).to(device),
        image_inputs=layout.model_inputs(features, input_ids),
    )


def _widened(run: Sequence[int], embeds: torch.Tensor, image_token_id: int, extra: int) -> list[int]:
    """``run`` with ``extra`` image tokens inserted before its first image token (the safety tokens' slots)."""
    run = list(run)
    if run.count(image_token_id) != len(embeds):
        raise InvalidInputError(
            f"an image run holds {run.count(image_token_id)} image tokens for {len(embeds)} embeddings"
        )
    first = run.index(image_token_id) if image_token_id in run else len(run)
    return [*run[:first], *[image_token_id] * extra, *run[first:]]


def _pad(rows: Sequence[Sequence[int]], value: int, side: Literal["left", "right"]) -> torch.Tensor:
    """A (len(rows), longest row) long tensor of the rows, filled with ``value`` on ``side``."""
    width = max(len(row) for row in rows)
    padded = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        start = width - len(row) if side == "left" else 0
        padded[i, start : start + len(row)] = torch.tensor(row, dtype=torch.long)
    return padded
