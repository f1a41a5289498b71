"""The guard's vision budget: images downscaled so that a native-resolution tower sees a bounded patch count.

Dynamic-resolution families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, GLM-4V, Mistral3 and LLaVA with a Pixtral
tower) keep each image near its own size, so the vision tower's cost grows with the image: Qwen2-VL-7B's own
processor allows 12.8 M pixels (16,384 patches, and the tower's attention is quadratic in them). The guard
judges each image at most :data:`DEFAULT_MAX_VISION_PATCHES` patches large
(``SafetyGuardConfig.max_vision_patches``), downscaling larger ones before the model's processor, aspect ratio
kept and sides on the processor's own grid (multiples of patch x merge size, which its resize leaves as they
are). Guarded generation reuses the features of that one vision pass, so the model sees what the guard judged.
"""

from __future__ import annotations

import math

from PIL import Image

__all__ = ["DEFAULT_MAX_VISION_PATCHES", "MIN_VISION_PATCHES", "fit_patch_budget", "patches_after_rounding"]

DEFAULT_MAX_VISION_PATCHES = 4096
"""Default budget: 4,096 tower patches per image (896 x 896 pixels at Qwen2-VL's 14-pixel patches, 1,024 merged
tokens; a whole 1024 x 1024 image at Pixtral's 16-pixel patches)."""

MIN_VISION_PATCHES = 64
"""Smallest budget a config may set: one merge unit of the widest merger (8 x 8 patches) must fit."""


def patches_after_rounding(width: int, height: int, patch: int, unit: int) -> int:
    """Upper bound of the patches a ``width`` x ``height`` image gives once a processor rounds its sides to ``unit``.

    Processors round each side to the nearest (Qwen2-VL's ``smart_resize``) or next (Pixtral's) multiple of
    ``unit`` pixels (patch x merge size); rounding up bounds both.
    """
    return math.ceil(width / unit) * math.ceil(height / unit) * (unit // patch) ** 2


def fit_patch_budget(image: Image.Image, patch: int, unit: int, max_patches: int) -> Image.Image:
    """``image`` downscaled to at most ``max_patches`` patches of ``patch`` pixels, sides multiples of ``unit``.

    The aspect ratio is kept (to within one ``unit``); an image already within the budget is returned as it
    is (the same object), so the processor resizes it as it would without the guard.

    Args:
        image: An RGB image.
        patch: The tower's patch side in pixels.
        unit: The side, in pixels, of the grid the processor puts image sides on (patch x merge size).
        max_patches: The budget; at least ``(unit // patch) ** 2`` (one unit).
    """
    if unit % patch or max_patches < (unit // patch) ** 2:
        raise ValueError(f"a budget of {max_patches} patches of {patch} px cannot hold one {unit}-px unit")
    width, height = image.size
    if patches_after_rounding(width, height, patch, unit) <= max_patches:
        return image
    units = max_patches // (unit // patch) ** 2  # merge units the budget holds
    scale = math.sqrt(units / ((width / unit) * (height / unit)))
    # The epsilon keeps an exact multiple (19.0 computed as 18.9999...) from losing a unit to rounding.
    columns = max(1, math.floor(width / unit * scale + 1e-9))
    rows = max(1, math.floor(height / unit * scale + 1e-9))
    # A side clamped up to one unit (a very long strip) leaves fewer units for the other side; clamping one
    # side after the other keeps columns * rows within the budget whatever the rounding did.
    columns = max(1, min(columns, units // rows))
    rows = max(1, min(rows, units // columns))
    return image.resize((columns * unit, rows * unit), Image.Resampling.BICUBIC, reducing_gap=3.0)
