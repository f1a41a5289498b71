"""The torch-only stand-ins for torchvision's transforms that torchvision-only image processors run on here."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F

from psaguard.testing import torch_transforms as tt

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is not None, reason="a real torchvision is installed and used"
)


def test_resize_to_a_size_and_by_the_shorter_side() -> None:
    image = torch.rand(2, 3, 20, 30)
    out = tt.resize(image, [10, 12], interpolation=tt.InterpolationMode.BICUBIC)
    assert out.shape == (2, 3, 10, 12)
    expected = F.interpolate(image, size=(10, 12), mode="bicubic", antialias=True, align_corners=False)
    assert torch.allclose(out, expected)
    assert tt.resize(image, 10).shape == (2, 3, 10, 15)  # the shorter side, aspect kept
    pixels = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    small = tt.resize(pixels, [4, 4], interpolation=2)  # a PIL filter code (bilinear)
    assert small.dtype == torch.uint8 and small.shape == (3, 4, 4)


def test_pad_crop_and_normalize() -> None:
    image = torch.ones(3, 2, 2)
    out = tt.pad(image, [1, 0, 2, 1], fill=[5.0, 6.0, 7.0])  # left, top, right, bottom; a fill per channel
    assert out.shape == (3, 3, 5)
    assert out[:, :2, 1:3].eq(1).all() and out[0, 2, 0] == 5 and out[2, 0, 4] == 7
    assert tt.crop(out, 0, 1, 2, 2).eq(1).all()
    assert tt.crop(torch.arange(16.0).reshape(1, 4, 4), 1, 1, 2, 2).flatten().tolist() == [5, 6, 9, 10]
    normalized = tt.normalize(torch.full((3, 1, 1), 0.5), [0.5, 0.0, 0.25], [0.5, 0.5, 0.25])
    assert normalized.flatten().tolist() == [0.0, 1.0, 1.0]


def test_a_torchvision_only_image_processor_imports_and_runs_without_torchvision() -> None:
    from PIL import Image

    module = tt.import_with_torch_transforms("transformers.models.cohere2_vision.image_processing_cohere2_vision")
    assert "torchvision" not in sys.modules  # the stand-ins were there only during the import
    processor = module.Cohere2VisionImageProcessor()
    out = processor(images=[Image.new("RGB", (40, 56), (200, 30, 30))], return_tensors="pt")
    pixels = out["pixel_values"]
    assert pixels.dtype == torch.float32 and pixels.shape[1:] == (3, 512, 512)
    assert torch.isfinite(pixels).all()
