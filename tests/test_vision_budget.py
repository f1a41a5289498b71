"""The vision budget: any image size and budget give at most the budget's patches on the processor's grid."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from psaguard.images.budget import fit_patch_budget, patches_after_rounding

GRIDS = st.sampled_from([(14, 28), (16, 32), (14, 14), (4, 8), (16, 16)])  # (patch, unit): Qwen2-VL, Qwen3-VL, ...


@settings(max_examples=300, deadline=None, derandomize=True)
@example(width=361, height=1315, grid=(14, 14), max_patches=1315)  # 19 columns computed as 18.9999...
@given(
    width=st.integers(1, 20_000),
    height=st.integers(1, 20_000),
    grid=GRIDS,
    max_patches=st.integers(64, 70_000),
)
def test_the_fitted_image_holds_at_most_the_budget_with_its_aspect_ratio(
    width: int, height: int, grid: tuple[int, int], max_patches: int
) -> None:
    patch, unit = grid
    fitted_size = _fitted_size(width, height, patch, unit, max_patches)
    if fitted_size is None:  # within the budget already: unchanged
        assert patches_after_rounding(width, height, patch, unit) <= max_patches
        return
    columns, rows = fitted_size[0] // unit, fitted_size[1] // unit
    assert fitted_size == (columns * unit, rows * unit)  # on the processor's grid: its resize keeps it
    assert patches_after_rounding(*fitted_size, patch, unit) <= max_patches
    units = max_patches // (unit // patch) ** 2  # whole merge units the budget holds
    scale = math.sqrt(units * unit * unit / (width * height))
    if min(columns, rows) > 1:  # each side is its scaled length rounded down to the grid: the aspect ratio kept
        assert width * scale - unit < fitted_size[0] <= width * scale + 1e-6
        assert height * scale - unit < fitted_size[1] <= height * scale + 1e-6
    else:  # a strip: the short side is one unit, the long one at most what is left of the budget
        assert max(columns, rows) <= units


def _fitted_size(width: int, height: int, patch: int, unit: int, max_patches: int) -> tuple[int, int] | None:
    """The size :func:`fit_patch_budget` resizes a ``width`` x ``height`` image to, or None if it keeps it."""

    class SizeOnly(Image.Image):
        """An image that records the size it is resized to instead of resampling pixels."""

        def __init__(self) -> None:
            super().__init__()
            self._size = (width, height)
            self.resized_to: tuple[int, int] | None = None

        def resize(self, size, *args, **kwargs):  # type: ignore[override]
            self.resized_to = tuple(size)
            return self

    image = SizeOnly()
    result = fit_patch_budget(image, patch, unit, max_patches)
    assert result is image
    return image.resized_to


def test_a_real_image_is_resampled_to_the_fitted_size() -> None:
    image = Image.new("RGB", (2688, 1792), "white")
    fitted = fit_patch_budget(image, 14, 28, 4096)
    assert fitted.size == _fitted_size(2688, 1792, 14, 28, 4096)
    assert (fitted.width // 14) * (fitted.height // 14) <= 4096 and fitted.mode == "RGB"


def test_an_image_within_the_budget_is_the_same_object() -> None:
    image = Image.new("RGB", (640, 480))
    assert fit_patch_budget(image, 14, 28, 4096) is image


def test_a_budget_smaller_than_one_unit_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        fit_patch_budget(Image.new("RGB", (64, 64)), 14, 28, 3)
