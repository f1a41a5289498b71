"""Torch-only stand-ins for the ``torchvision.transforms.v2.functional`` ops transformers' image processors call.

Some families' only image processor is transformers' torchvision backend, and torchvision cannot be installed
beside the CPU torch CI tests. Its image ops on tensors are plain torch (resizing is ``interpolate`` with
antialiasing, padding is ``pad``), so :func:`import_with_torch_transforms` imports such a processor's module with
this module standing in for ``torchvision.transforms.v2.functional``: the family's own preprocessing logic
(tiling, grids, its extra inputs) runs unchanged on the ops below. Only modules that cannot be imported at
all without torchvision are imported this way; what torchvision offers beyond these ops (``torchvision.ops``,
``torchvision.io``) stays missing, and such a module raises :class:`ImportError` as before.

For tests and demos (tiny random models): the ops follow torchvision's semantics for the arguments these
processors pass, not its numerics to the last bit.
"""

from __future__ import annotations

import enum
import importlib
import sys
import types
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "InterpolationMode",
    "crop",
    "grayscale_to_rgb",
    "import_with_torch_transforms",
    "normalize",
    "pad",
    "resize",
    "to_dtype",
]


class InterpolationMode(enum.Enum):
    """torchvision's interpolation modes (its values)."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


_MODES = {
    InterpolationMode.NEAREST: "nearest",
    InterpolationMode.NEAREST_EXACT: "nearest-exact",
    InterpolationMode.BILINEAR: "bilinear",
    InterpolationMode.BICUBIC: "bicubic",
    InterpolationMode.BOX: "bilinear",
    InterpolationMode.HAMMING: "bilinear",
    InterpolationMode.LANCZOS: "bicubic",
}
"""torch's ``interpolate`` mode per torchvision mode (the antialiased filters torch lacks map to the nearest)."""

_PIL_FILTERS = {
    0: InterpolationMode.NEAREST,
    1: InterpolationMode.LANCZOS,
    2: InterpolationMode.BILINEAR,
    3: InterpolationMode.BICUBIC,
    4: InterpolationMode.BOX,
    5: InterpolationMode.HAMMING,
}
"""torchvision's mode per PIL resampling filter (PIL's ``Image.Resampling`` values)."""


def resize(
    image: torch.Tensor,
    size: int | Sequence[int],
    interpolation: InterpolationMode | int = InterpolationMode.BILINEAR,
    max_size: int | None = None,
    antialias: bool = True,
) -> torch.Tensor:
    """``image`` (``..., C, H, W``) resized to ``size`` (``[h, w]``, or the shorter side as one int)."""
    height, width = image.shape[-2:]
    new = _target_size(height, width, size, max_size)
    if tuple(new) == (height, width):
        return image
    if isinstance(interpolation, int):  # a PIL resampling filter
        interpolation = _PIL_FILTERS.get(interpolation, InterpolationMode.BILINEAR)
    mode = _MODES[InterpolationMode(interpolation)]
    flat = image.reshape(-1, *image.shape[-3:]).float()
    kwargs = {"antialias": antialias, "align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(flat, size=new, mode=mode, **kwargs)
    if not image.is_floating_point():
        out = out.round().clamp(0, torch.iinfo(image.dtype).max)
    return out.to(image.dtype).reshape(*image.shape[:-2], *new)


def _target_size(height: int, width: int, size: int | Sequence[int], max_size: int | None) -> tuple[int, int]:
    """``[h, w]`` as given, or the shorter side ``size``, aspect kept and the longer side within ``max_size``."""
    if not isinstance(size, int) and len(size) != 1:
        return int(size[0]), int(size[1])
    short = size if isinstance(size, int) else size[0]
    scale = short / min(height, width)
    new = (short, int(width * scale)) if height <= width else (int(height * scale), short)
    if max_size is not None and max(new) > max_size:
        scale = max_size / max(new)
        new = (int(new[0] * scale), int(new[1] * scale))
    return new


def pad(
    image: torch.Tensor,
    padding: int | Sequence[int],
    fill: float | Sequence[float] | None = 0,
    padding_mode: str = "constant",
) -> torch.Tensor:
    """``image`` padded by ``padding`` (one int, ``[left/right, top/bottom]`` or ``[left, top, right, bottom]``)."""
    sides = [padding] * 4 if isinstance(padding, int) else list(padding)
    if len(sides) == 1:
        sides = sides * 4
    elif len(sides) == 2:
        sides = [sides[0], sides[1], sides[0], sides[1]]
    left, top, right, bottom = (int(s) for s in sides)
    if padding_mode != "constant":
        mode = {"edge": "replicate"}.get(padding_mode, padding_mode)
        flat = image.reshape(-1, *image.shape[-3:])
        out = F.pad(flat.float(), (left, right, top, bottom), mode=mode).to(image.dtype)
        return out.reshape(*image.shape[:-2], *out.shape[-2:])
    fill = 0 if fill is None else fill
    height, width = image.shape[-2:]
    out = image.new_empty(*image.shape[:-2], height + top + bottom, width + left + right)
    values = torch.as_tensor(fill, dtype=image.dtype)
    out[...] = values.reshape(-1, 1, 1) if values.ndim else values
    out[..., top : top + height, left : left + width] = image
    return out


def normalize(image: torch.Tensor, mean: Sequence[float], std: Sequence[float], inplace: bool = False) -> torch.Tensor:
    """``(image - mean) / std`` per channel."""
    mean_t = torch.as_tensor(mean, dtype=image.dtype, device=image.device).reshape(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=image.dtype, device=image.device).reshape(-1, 1, 1)
    return image.sub_(mean_t).div_(std_t) if inplace else (image - mean_t) / std_t


def crop(image: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """The ``height`` x ``width`` window at (``top``, ``left``), zero-padded where it leaves the image."""
    full_h, full_w = image.shape[-2:]
    padded = pad(image, [max(-left, 0), max(-top, 0), max(left + width - full_w, 0), max(top + height - full_h, 0)])
    top, left = max(top, 0), max(left, 0)
    return padded[..., top : top + height, left : left + width]


def grayscale_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """A one-channel image repeated to three channels (others unchanged)."""
    return image.repeat_interleave(3, dim=-3) if image.shape[-3] == 1 else image


def to_dtype(image: torch.Tensor, dtype: torch.dtype = torch.float32, scale: bool = False) -> torch.Tensor:
    """``image`` as ``dtype``; with ``scale``, integer ranges map to [0, 1] and back."""
    if not scale or image.dtype == dtype:
        return image.to(dtype)
    if image.is_floating_point() and not dtype.is_floating_point:
        return image.mul(torch.iinfo(dtype).max + 1.0 - 1e-3).to(dtype)
    if not image.is_floating_point() and dtype.is_floating_point:
        return image.to(dtype) / torch.iinfo(image.dtype).max
    return image.to(dtype)


def _modules() -> dict[str, types.ModuleType]:
    """``torchvision``, ``torchvision.transforms`` and its ``functional`` / ``v2.functional``, backed by this module."""
    this = sys.modules[__name__]
    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.v2")
    root, transforms, v2 = (types.ModuleType(n) for n in names)
    root.transforms, transforms.v2 = transforms, v2
    transforms.functional = v2.functional = this
    transforms.InterpolationMode = InterpolationMode
    return {
        "torchvision": root,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": this,
        "torchvision.transforms.v2": v2,
        "torchvision.transforms.v2.functional": this,
    }


def import_with_torch_transforms(module_name: str) -> types.ModuleType:
    """Import ``module_name`` (a transformers module that imports torchvision's transforms) on these ops.

    The stand-in modules are in ``sys.modules`` only during the import. transformers' torchvision image
    processor base, imported without torchvision, gets these ops as its ``tvF`` once (it has none otherwise).
    A module that imports more of torchvision raises :class:`ImportError`. A real torchvision, where
    installed, is used as it is.
    """
    from transformers import image_processing_backends, image_utils

    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return importlib.import_module(module_name)
    if not hasattr(image_processing_backends, "tvF"):
        mapping = {
            image_utils.PILImageResampling.NEAREST: InterpolationMode.NEAREST_EXACT,
            image_utils.PILImageResampling.BOX: InterpolationMode.BOX,
            image_utils.PILImageResampling.BILINEAR: InterpolationMode.BILINEAR,
            image_utils.PILImageResampling.HAMMING: InterpolationMode.HAMMING,
            image_utils.PILImageResampling.BICUBIC: InterpolationMode.BICUBIC,
            image_utils.PILImageResampling.LANCZOS: InterpolationMode.LANCZOS,
        }
        image_processing_backends.tvF = sys.modules[__name__]
        image_processing_backends.pil_torch_interpolation_mapping = mapping
        image_processing_backends.torch_pil_interpolation_mapping = {v: k for k, v in mapping.items()}
    stand_ins = _modules()
    sys.modules.update(stand_ins)
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"{module_name} needs more of torchvision than its transforms: {err}") from err
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)
