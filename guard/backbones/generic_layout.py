"""How the generic adapter lays out what ``get_image_features`` returns: its features, patches, token types.

Each rule of :func:`split_patches` recognizes one layout of a tower's per-patch states (stacked sequences,
feature maps, flat states with ``image_grid_thw`` or ``image_sizes``, states pooled to one row per embedding)
and returns one ``(H, W, C)`` grid or ``(N, C)`` sequence per image; the first rule that fits wins.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from psaguard.backbones.base import VisionFeatures, pool_to_square_grid
from psaguard.errors import InvalidInputError

__all__ = [
    "GenericFeatures",
    "features_of",
    "image_positions",
    "is_per_image",
    "num_images_of",
    "per_image_outputs",
    "pool_sequence_to_square",
    "select_feature_layers",
    "shared_outputs",
    "split_features",
    "split_patches",
    "square_side",
    "to_square",
    "widened",
]

_NOT_SIDE_OUTPUTS = frozenset({"pooler_output", "last_hidden_state", "hidden_states", "attentions"})
Layout = Callable[[torch.Tensor, dict[str, torch.Tensor], Sequence[int], Any], list[torch.Tensor] | None]


@dataclass(frozen=True)
class GenericFeatures(VisionFeatures):
    """A vision pass of the generic adapter: the patches, each image's projected features, run and inputs.

    ``embeds[i]`` is image ``i``'s ``(L_i, D)`` projected features (``get_image_features``'s own, so the
    language model never needs a second vision pass); ``runs[i]`` its ids as the processor writes them (None
    where the features came without the processor, e.g. in ``wrap()``); ``image_inputs`` the per-image
    inputs the model's forward takes besides the features (first dimension: the images).
    """

    embeds: tuple[torch.Tensor, ...] = ()
    runs: tuple[tuple[int, ...], ...] | None = None
    image_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    side_features: dict[str, tuple[tuple[torch.Tensor, ...], ...]] = field(default_factory=dict)
    """Per-layer features that travel with the embeddings (DeepStack): name -> per layer, one tensor per image."""
    shared_outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    """Tensors of ``get_image_features``'s output that belong to no image and go back to the model as they are
    (Ovis2's visual indicator embeddings)."""

    def subset(self, rows: Sequence[int]) -> GenericFeatures:
        rows = list(rows)
        return GenericFeatures(
            patches=self.patches[rows],
            selected=self.selected[rows],
            embeds=tuple(self.embeds[r] for r in rows),
            runs=None if self.runs is None else tuple(self.runs[r] for r in rows),
            image_inputs={name: value[rows] for name, value in self.image_inputs.items()},
            side_features={
                name: tuple(tuple(layer[r] for r in rows) for layer in layers)
                for name, layers in self.side_features.items()
            },
            shared_outputs=self.shared_outputs,
        )


def features_of(features: VisionFeatures) -> GenericFeatures:
    """``features`` as the generic adapter's; InvalidInputError if another adapter's vision pass made them."""
    if not isinstance(features, GenericFeatures):
        raise InvalidInputError("these features come from another adapter's vision pass")
    return features


def pool_sequence_to_square(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """One image's (N, C) tower states -> (side * side, C): as a grid where N is square, else along the sequence.

    A sequence with one extra leading token over a square (a CLS token) drops it first.
    """
    n = tokens.shape[0]
    if math.isqrt(n - 1) ** 2 == n - 1 and n > 1:
        tokens, n = tokens[1:], n - 1
    root = math.isqrt(n)
    if root * root == n:
        return pool_to_square_grid(tokens.reshape(root, root, -1), side)
    pooled = F.adaptive_avg_pool1d(tokens.transpose(0, 1).unsqueeze(0).float(), side * side)
    return pooled.squeeze(0).transpose(0, 1).to(tokens.dtype)


def select_feature_layers(
    hidden_states: Sequence[torch.Tensor], layer: int | Sequence[int], strategy: str
) -> torch.Tensor:
    """The tower states a LLaVA-style projector reads: layer(s) ``layer``, CLS dropped for the ``'default'``
    strategy, concatenated on channels."""
    hidden = [hidden_states[i] for i in ([layer] if isinstance(layer, int) else layer)]
    if strategy == "default":
        hidden = [h[:, 1:] for h in hidden]
    return torch.cat(hidden, dim=-1)


def to_square(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """One image's grid or sequence of tower states on the safety projector's (side * side, C) grid."""
    return pool_to_square_grid(tokens, side) if tokens.dim() == 3 else pool_sequence_to_square(tokens, side)


def split_features(pooled: Any, num_images: int, counts: Sequence[int] | None) -> list[torch.Tensor]:
    """One ``(L_i, D)`` tensor per image: by the runs' image-token counts where known, else by the output's shape."""
    listed = isinstance(pooled, (list, tuple))
    if counts is None and len(pooled) == num_images and (listed or pooled.dim() == 3):
        return [p.reshape(-1, p.shape[-1]) for p in pooled]
    flat = torch.cat([p.reshape(-1, p.shape[-1]) for p in pooled]) if listed else pooled.reshape(-1, pooled.shape[-1])
    if counts is None:
        raise InvalidInputError(f"{len(flat)} image features do not split into {num_images} images")
    if sum(counts) != len(flat):
        raise InvalidInputError(f"{len(flat)} image features do not split into {list(counts)} image tokens")
    return list(torch.split(flat, list(counts)))


def per_image_outputs(out: Any, lengths: Sequence[int]) -> dict[str, tuple[tuple[torch.Tensor, ...], ...]]:
    """Fields of ``get_image_features``'s output that hold, per layer, one tensor per image aligned with its
    embeddings (DeepStack features); they go back to the model with the embeddings."""
    found = {}
    for name, value in out.items():
        if name in _NOT_SIDE_OUTPUTS or not isinstance(value, (list, tuple)) or not value:
            continue
        layers = [_per_image(layer, lengths) for layer in value]
        if all(layer is not None for layer in layers):
            found[name] = tuple(layers)
    return found


def shared_outputs(out: Any, lengths: Sequence[int]) -> dict[str, torch.Tensor]:
    """Tensor fields of ``get_image_features``'s output beside the features, the tower's states and the per-image
    side features: they hold no image's rows (their first dimension is not the images' feature rows)."""
    return {
        name: value
        for name, value in out.items()
        if name not in _NOT_SIDE_OUTPUTS and torch.is_tensor(value) and value.dim() == 2 and len(value) != sum(lengths)
    }


def _per_image(layer: Any, lengths: Sequence[int]) -> tuple[torch.Tensor, ...] | None:
    if isinstance(layer, (list, tuple)):
        pieces = list(layer)
    elif torch.is_tensor(layer) and len(layer) == sum(lengths):
        pieces = list(torch.split(layer, list(lengths)))
    else:
        return None
    return tuple(pieces) if [len(p) for p in pieces] == list(lengths) else None


# ---------------------------------------------------------------------------- the tower's states per image
def split_patches(
    hidden: Any, image_inputs: dict[str, torch.Tensor], lengths: Sequence[int], vision: Any, family: str
) -> list[torch.Tensor]:
    """Each image's tower states (an (H, W, C) grid or an (N, C) sequence), by the first layout that fits.

    ``lengths``: each image's embeddings; ``vision``: the model's vision config (patch and merge sizes).
    """
    if isinstance(hidden, (list, tuple)):
        pieces = [h.reshape(-1, h.shape[-1]) for h in hidden]
        if len(pieces) == len(lengths):
            return pieces
        hidden = torch.cat(pieces)
    flat_inputs = image_inputs.get("image_grid_thw") is not None or image_inputs.get("image_sizes") is not None
    if hidden.dim() == 3 and len(hidden) == 1 and flat_inputs:
        hidden = hidden[0]  # flat states with a batch dimension of one
    for layout in _LAYOUTS:
        if (pieces := layout(hidden, image_inputs, lengths, vision)) is not None:
            return pieces
    raise InvalidInputError(
        f"cannot split tower states of shape {tuple(hidden.shape)} into {len(lengths)} images: a "
        f"{family!r} adapter must override image_patches"
    )


def _feature_maps(hidden: torch.Tensor, inputs: Any, lengths: Sequence[int], vision: Any) -> list | None:
    """(B, C, H, W) maps of convolutional necks, else (B, H, W, C); an image's tiles side by side in width."""
    if hidden.dim() != 4 or len(hidden) % len(lengths):
        return None
    maps = hidden.permute(0, 2, 3, 1) if hidden.shape[2] == hidden.shape[3] != hidden.shape[1] else hidden
    per = len(maps) // len(lengths)
    return [torch.cat(list(maps[i * per : (i + 1) * per]), dim=1) for i in range(len(lengths))]


def _merge_blocks(hidden: torch.Tensor, inputs: Any, lengths: Sequence[int], vision: Any) -> list | None:
    """Flat patches of ``image_grid_thw`` in merge-block order: each image's first frame as its (h, w) grid."""
    grids = inputs.get("image_grid_thw")
    if hidden.dim() != 2 or grids is None or int(grids.prod(-1).sum()) != hidden.shape[0]:
        return None
    merge = _merge_size(vision)
    return [_unmerge(p, g.tolist(), merge) for p, g in zip(torch.split(hidden, grids.prod(-1).tolist()), grids)]


def _merged(hidden: torch.Tensor, inputs: Any, lengths: Sequence[int], vision: Any) -> list | None:
    """Flat states merged already (one row per embedding): each image's merged grid, where it fits."""
    grids = inputs.get("image_grid_thw")
    if hidden.dim() != 2 or grids is None or sum(lengths) != hidden.shape[0]:
        return None
    merge = _merge_size(vision)
    merged = [(int(t), int(h) // merge, int(w) // merge) for t, h, w in grids.tolist()]
    pieces = torch.split(hidden, list(lengths))
    return [_unmerge(p, g, 1) if g[0] * g[1] * g[2] == len(p) else p for p, g in zip(pieces, merged)]


def _sized(hidden: torch.Tensor, inputs: Any, lengths: Sequence[int], vision: Any) -> list | None:
    """Flat patches with ``image_sizes`` (pixels): each image's (height / patch, width / patch) grid."""
    sizes, patch = inputs.get("image_sizes"), getattr(vision, "patch_size", None)
    if hidden.dim() != 2 or sizes is None or not isinstance(patch, int) or sizes.dim() != 2:
        return None
    shapes = [(int(h) // patch, int(w) // patch) for h, w in sizes.tolist()]
    if sum(h * w for h, w in shapes) != hidden.shape[0]:
        return None
    return [p.reshape(h, w, -1) for p, (h, w) in zip(torch.split(hidden, [h * w for h, w in shapes]), shapes)]


def _pooled(hidden: torch.Tensor, inputs: Any, lengths: Sequence[int], vision: Any) -> list | None:
    """States pooled already: one row per embedding."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    if hidden.dim() not in (2, 3) or len(hidden) == len(lengths) or len(flat) != sum(lengths):
        return None
    return list(torch.split(flat, list(lengths)))


def _stacked(hidden: torch.Tensor, inputs: Any, lengths: Sequence[int], vision: Any) -> list | None:
    """(images * k, N, C) sequences: one per image (an image's k tiles concatenated)."""
    hidden = hidden.unsqueeze(0) if hidden.dim() == 2 else hidden
    if hidden.dim() != 3 or hidden.shape[0] % len(lengths):
        return None
    return list(hidden.reshape(len(lengths), -1, hidden.shape[-1]))


_LAYOUTS: tuple[Layout, ...] = (_feature_maps, _merge_blocks, _merged, _sized, _pooled, _stacked)


def _merge_size(vision: Any) -> int:
    return int(getattr(vision, "spatial_merge_size", 1) or 1)


def _unmerge(hidden: torch.Tensor, grid: Sequence[int], merge: int) -> torch.Tensor:
    """(t * h * w, C) states in merge-block order -> the first frame's (h, w, C) grid."""
    t, h, w = (int(v) for v in grid)
    if merge <= 1 or h % merge or w % merge:
        return hidden.reshape(t, h, w, -1)[0]
    blocks = hidden.reshape(t, h // merge, w // merge, merge, merge, hidden.shape[-1])
    return blocks.permute(0, 1, 3, 2, 4, 5).reshape(t, h, w, hidden.shape[-1])[0]


# ---------------------------------------------------------------------------- token types
def image_positions(
    input_ids: torch.Tensor, image_token_id: int, widened: Sequence[int], lengths: Sequence[int]
) -> torch.Tensor:
    """Image-token positions holding image features (True) rather than the guard's safety rows (False).

    Image ``i`` owns the next ``widened[i]`` image tokens (in order across the rows), the first
    ``widened[i] - lengths[i]`` of them its safety rows.
    """
    is_image = torch.zeros_like(input_ids, dtype=torch.bool)
    owner = [k >= w - n for w, n in zip(widened, lengths) for k in range(w)]
    positions = (input_ids == image_token_id).nonzero().tolist()
    if len(positions) != len(owner):
        raise InvalidInputError(f"{len(positions)} image tokens in the rows for {len(owner)} feature rows")
    for (row, column), image in zip(positions, owner):
        is_image[row, column] = image
    return is_image


def num_images_of(pixel_values: torch.Tensor, image_inputs: dict[str, torch.Tensor]) -> int:
    """How many images ``pixel_values`` hold (tiles and flat patches counted by their per-image inputs)."""
    for name in ("image_grid_thw", "image_sizes", "spatial_shapes"):
        if (value := image_inputs.get(name)) is not None:
            return len(value)
    return len(pixel_values)


def widened(layers: Sequence[Sequence[torch.Tensor]], image_features: Sequence[torch.Tensor]) -> list:
    """Per layer, each image's side features behind zero rows for its safety tokens (widened to its features)."""
    return [
        [torch.cat([own.new_zeros(len(f) - len(own), *own.shape[1:]), own]) for own, f in zip(layer, image_features)]
        for layer in layers
    ]


def is_per_image(value: Any, num_images: int) -> bool:
    """Whether ``value`` is a tensor with one row per image."""
    return torch.is_tensor(value) and len(value) == num_images


def square_side(size: Any) -> int:
    """A square side from a config value (some towers' configs give (height, width) pairs)."""
    return int(size) if isinstance(size, int) else int(size[0])
