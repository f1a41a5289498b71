"""The language model's training input with the safety tokens in it.

The LLM sees, for every image, ``[llm_tokens ; projected patches]`` in place of the image placeholder
(paper §2.3: "[text before <image>] [64 safety tokens] [576 image patches] [text after]"). Each run of
image-placeholder ids is expanded to as many ids as there are image embeddings, the ids are embedded,
and the image embeddings are scattered into those positions; attention mask and labels grow with them.
The scatter keeps the graph, so the LM loss reaches ``llm_tokens`` (their only training signal).

This is the training-side twin of the guarded-generation injection; both must place the tokens the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from psaguard.training.collate import IGNORE_INDEX

__all__ = ["build_llm_inputs", "image_embeddings"]


def image_embeddings(
    llm_tokens: torch.Tensor, projected: torch.Tensor | Sequence[torch.Tensor], dtype: torch.dtype
) -> list[torch.Tensor]:
    """``[llm_tokens ; projected_i]`` per image: one (T + N_i, D) tensor each, in the language model's dtype."""
    tokens = llm_tokens.reshape(-1, llm_tokens.shape[-1]).to(dtype)
    return [torch.cat([tokens, image.to(dtype)]) for image in projected]


def build_llm_inputs(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None,
    images: torch.Tensor | Sequence[torch.Tensor],
    embed: nn.Module,
    image_token_id: int,
    pad_id: int,
) -> dict[str, torch.Tensor]:
    """``inputs_embeds``, ``attention_mask`` (and ``labels``) with every image placeholder run expanded.

    Args:
        input_ids: (B, T) right-padded ids; each image is one run of ``image_token_id`` (any length).
        attention_mask: (B, T), 1 on real tokens.
        labels: (B, T) or None; image positions get -100.
        images: One (N_i, D) embedding per image (or a (num_images, N, D) tensor), in the order the runs
            appear (row by row); N_i differs between images in any-resolution families (LLaVA-NeXT).
        embed: The language model's input embedding.
        image_token_id: Id of the placeholder.
        pad_id: Id used for padding rows that end up shorter.
    """
    lengths = iter([len(image) for image in images])
    rows_ids, rows_mask, rows_labels = [], [], []
    for row in range(len(input_ids)):
        length = int(attention_mask[row].sum())  # right padding: real tokens first
        ids, mask = input_ids[row, :length], attention_mask[row, :length]
        row_labels = labels[row, :length] if labels is not None else ids
        pieces_ids, pieces_mask, pieces_labels = [], [], []
        for start, stop, is_image in _runs(ids == image_token_id):
            if is_image:
                per_image = next(lengths, None)
                if per_image is None:
                    raise ValueError(f"the batch has more image runs than its {len(images)} images")
                pieces_ids.append(ids.new_full((per_image,), image_token_id))
                pieces_mask.append(mask.new_ones(per_image))
                pieces_labels.append(ids.new_full((per_image,), IGNORE_INDEX))
            else:
                pieces_ids.append(ids[start:stop])
                pieces_mask.append(mask[start:stop])
                pieces_labels.append(row_labels[start:stop])
        rows_ids.append(torch.cat(pieces_ids))
        rows_mask.append(torch.cat(pieces_mask))
        rows_labels.append(torch.cat(pieces_labels))
    ids = pad_sequence(rows_ids, batch_first=True, padding_value=pad_id)
    image_positions = ids == image_token_id
    if next(lengths, None) is not None:
        raise ValueError(f"the batch has fewer image runs than its {len(images)} images")
    flat = torch.cat(list(images))
    embeds = embed(ids.to(embed.weight.device))
    mask3d = image_positions.to(embeds.device).unsqueeze(-1).expand_as(embeds)
    embeds = embeds.masked_scatter(mask3d, flat.to(embeds.device, embeds.dtype))
    out = {
        "inputs_embeds": embeds,
        "attention_mask": pad_sequence(rows_mask, batch_first=True, padding_value=0).to(embeds.device),
    }
    if labels is not None:
        out["labels"] = pad_sequence(rows_labels, batch_first=True, padding_value=IGNORE_INDEX).to(embeds.device)
    return out


def _runs(flags: torch.Tensor) -> list[tuple[int, int, bool]]:
    """(start, stop, value) of the maximal runs of equal values in a 1-D bool tensor."""
    values = flags.tolist()
    runs, start = [], 0
    for index in range(1, len(values) + 1):
        if index == len(values) or values[index] != values[start]:
            runs.append((start, index, bool(values[start])))
            start = index
    return runs
