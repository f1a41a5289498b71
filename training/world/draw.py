"""Drawing primitives of the synthetic world: shape masks, fills, backgrounds and layouts.

Every item is drawn as a greyscale mask on a square tile in unit coordinates, so one geometry serves any
resolution and every fill style. Small images are drawn on a larger canvas and box-filtered down, which
keeps edges smooth and shapes bold at 32x32. Nothing here holds state: randomness comes from the
``numpy.random.Generator`` the caller passes, so a seed fixes every pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from psaguard.training.world.font import GLYPH_HEIGHT, text_bitmap

__all__ = [
    "MIN_CANVAS",
    "SHAPES",
    "background",
    "banner",
    "canvas_size",
    "compose",
    "item_boxes",
    "shape_mask",
    "text_mask",
]

MIN_CANVAS = 128
"""Images smaller than this are drawn at a multiple of their size and box-filtered down (anti-aliasing)."""

Point = tuple[float, float]
Painter = Callable[[ImageDraw.ImageDraw, Callable[[float, float], Point], float], None]


def canvas_size(size: int) -> int:
    """Side of the drawing canvas for an output side of ``size`` pixels."""
    return size * max(1, math.ceil(MIN_CANVAS / size))


# ---- shape painters: draw ink (255) and holes (0) on a tile, in unit coordinates p(u, v) ----


def _circle(d: ImageDraw.ImageDraw, p, t: float) -> None:
    d.ellipse([p(0.1, 0.1), p(0.9, 0.9)], fill=255)


def _square(d: ImageDraw.ImageDraw, p, t: float) -> None:
    d.rectangle([p(0.15, 0.15), p(0.85, 0.85)], fill=255)


def _triangle(d: ImageDraw.ImageDraw, p, t: float) -> None:
    d.polygon([p(0.5, 0.08), p(0.93, 0.88), p(0.07, 0.88)], fill=255)


def _star(d: ImageDraw.ImageDraw, p, t: float) -> None:
    points = []
    for k in range(10):
        radius = 0.47 if k % 2 == 0 else 0.2
        angle = -math.pi / 2 + k * math.pi / 5
        points.append(p(0.5 + radius * math.cos(angle), 0.53 + radius * math.sin(angle)))
    d.polygon(points, fill=255)


def _house(d: ImageDraw.ImageDraw, p, t: float) -> None:
    d.rectangle([p(0.2, 0.45), p(0.8, 0.92)], fill=255)
    d.polygon([p(0.06, 0.5), p(0.5, 0.08), p(0.94, 0.5)], fill=255)
    d.rectangle([p(0.42, 0.64), p(0.58, 0.92)], fill=0)


def _pill(d: ImageDraw.ImageDraw, p, t: float) -> None:
    x0, y0 = p(0.05, 0.3)
    x1, y1 = p(0.95, 0.7)
    d.rounded_rectangle([x0, y0, x1, y1], radius=(y1 - y0) / 2, fill=255)
    d.rectangle([p(0.48, 0.28), p(0.53, 0.72)], fill=0)


def _coin(d: ImageDraw.ImageDraw, p, t: float) -> None:
    d.ellipse([p(0.06, 0.06), p(0.94, 0.94)], fill=255)
    d.ellipse([p(0.22, 0.22), p(0.78, 0.78)], fill=0)
    d.rectangle([p(0.42, 0.28), p(0.58, 0.72)], fill=255)


def _car(d: ImageDraw.ImageDraw, p, t: float) -> None:
    d.polygon([p(0.24, 0.42), p(0.34, 0.16), p(0.66, 0.16), p(0.8, 0.42)], fill=255)
    d.rounded_rectangle([p(0.03, 0.4), p(0.97, 0.7)], radius=0.06 * t, fill=255)
    for cx in (0.26, 0.74):
        d.ellipse([p(cx - 0.16, 0.56), p(cx + 0.16, 0.88)], fill=0)
        d.ellipse([p(cx - 0.12, 0.6), p(cx + 0.12, 0.84)], fill=255)


def _tree(d: ImageDraw.ImageDraw, p, t: float) -> None:
    d.rectangle([p(0.41, 0.5), p(0.59, 0.95)], fill=255)
    d.ellipse([p(0.12, 0.04), p(0.88, 0.62)], fill=255)


def _cup(d: ImageDraw.ImageDraw, p, t: float) -> None:
    d.ellipse([p(0.5, 0.3), p(0.92, 0.72)], fill=255)
    d.ellipse([p(0.6, 0.4), p(0.82, 0.62)], fill=0)
    d.polygon([p(0.1, 0.15), p(0.72, 0.15), p(0.63, 0.9), p(0.19, 0.9)], fill=255)


def _person(d: ImageDraw.ImageDraw, p, t: float) -> None:
    w = max(1, round(0.11 * t))
    d.ellipse([p(0.36, 0.03), p(0.64, 0.31)], fill=255)
    d.line([p(0.5, 0.3), p(0.5, 0.64)], fill=255, width=w)
    d.line([p(0.16, 0.44), p(0.84, 0.44)], fill=255, width=w)
    d.line([p(0.5, 0.62), p(0.24, 0.96)], fill=255, width=w)
    d.line([p(0.5, 0.62), p(0.76, 0.96)], fill=255, width=w)


def _flag(d: ImageDraw.ImageDraw, p, t: float) -> None:
    d.rectangle([p(0.08, 0.04), p(0.18, 0.97)], fill=255)
    d.polygon([p(0.18, 0.06), p(0.95, 0.12), p(0.92, 0.58), p(0.18, 0.54)], fill=255)
    for v in (0.2, 0.36):
        d.polygon([p(0.18, v), p(0.94, v + 0.04), p(0.94, v + 0.1), p(0.18, v + 0.06)], fill=0)


def _gun(d: ImageDraw.ImageDraw, p, t: float) -> None:
    d.rectangle([p(0.04, 0.22), p(0.96, 0.44)], fill=255)
    d.rectangle([p(0.86, 0.14), p(0.93, 0.22)], fill=255)
    d.polygon([p(0.5, 0.42), p(0.76, 0.42), p(0.68, 0.9), p(0.42, 0.9)], fill=255)
    d.ellipse([p(0.3, 0.36), p(0.52, 0.66)], fill=255)
    d.ellipse([p(0.35, 0.44), p(0.47, 0.6)], fill=0)


def _bubble(d: ImageDraw.ImageDraw, p, t: float) -> None:
    d.ellipse([p(0.03, 0.06), p(0.97, 0.7)], fill=255)
    d.polygon([p(0.22, 0.58), p(0.46, 0.64), p(0.1, 0.96)], fill=255)
    zigzag = [p(0.18, 0.44), p(0.32, 0.24), p(0.45, 0.46), p(0.58, 0.24), p(0.7, 0.46), p(0.84, 0.26)]
    d.line(zigzag, fill=0, width=max(1, round(0.08 * t)), joint="curve")


def _scale(d: ImageDraw.ImageDraw, p, t: float) -> None:
    w = max(1, round(0.07 * t))
    d.rectangle([p(0.46, 0.2), p(0.54, 0.92)], fill=255)
    d.rectangle([p(0.26, 0.86), p(0.74, 0.96)], fill=255)
    d.line([p(0.08, 0.12), p(0.92, 0.36)], fill=255, width=w)
    d.pieslice([p(-0.04, 0.02), p(0.28, 0.34)], 0, 180, fill=255)
    d.pieslice([p(0.7, 0.26), p(1.02, 0.58)], 0, 180, fill=255)


def _eye(d: ImageDraw.ImageDraw, p, t: float) -> None:
    d.chord([p(0.02, 0.22), p(0.98, 1.1)], 200, 340, fill=255)
    d.chord([p(0.02, -0.1), p(0.98, 0.78)], 20, 160, fill=255)
    d.ellipse([p(0.3, 0.28), p(0.7, 0.72)], fill=0)
    d.ellipse([p(0.38, 0.36), p(0.62, 0.64)], fill=255)


def _spiral(d: ImageDraw.ImageDraw, p, t: float) -> None:
    turns, steps = 2.6, 90
    points = []
    for k in range(steps + 1):
        angle = turns * 2 * math.pi * k / steps
        radius = 0.46 * k / steps
        points.append(p(0.5 + radius * math.cos(angle), 0.5 + radius * math.sin(angle)))
    d.line(points, fill=255, width=max(1, round(0.09 * t)), joint="curve")


SHAPES: dict[str, Painter] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "house": _house,
    "pill": _pill,
    "coin": _coin,
    "car": _car,
    "tree": _tree,
    "cup": _cup,
    "person": _person,
    "flag": _flag,
    "gun": _gun,
    "bubble": _bubble,
    "scale": _scale,
    "eye": _eye,
    "spiral": _spiral,
}
"""Every drawable noun of the world and the function that paints its mask."""


def shape_mask(noun: str, tile: int, angle: float = 0.0, mirror: bool = False) -> Image.Image:
    """Mask ('L', tile x tile) of one ``noun``, optionally rotated by ``angle`` degrees and mirrored."""
    mask = Image.new("L", (tile, tile), 0)

    def p(u: float, v: float) -> Point:
        return (u * (tile - 1), v * (tile - 1))

    SHAPES[noun](ImageDraw.Draw(mask), p, float(tile))
    if mirror:
        mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if angle:
        mask = mask.rotate(angle, resample=Image.Resampling.BILINEAR)
    return mask


def text_mask(word: str, lines: int, canvas: int, rng: np.random.Generator) -> Image.Image:
    """Mask of ``word`` written ``lines`` times, stacked, at the largest whole-pixel scale that fits."""
    bitmap = text_bitmap(word)
    height, width = bitmap.shape
    line_height = GLYPH_HEIGHT + 2
    scale = max(1, int(min(0.88 * canvas / width, 0.88 * canvas / (lines * line_height))))
    block = np.zeros((lines * line_height * scale, width * scale), dtype=bool)
    big = np.kron(bitmap, np.ones((scale, scale), dtype=bool))
    for i in range(lines):
        top = (i * line_height + 1) * scale
        block[top : top + height * scale] = big
    mask = np.zeros((canvas, canvas), dtype=np.uint8)
    slack_y, slack_x = canvas - block.shape[0], canvas - block.shape[1]
    y = int(rng.integers(slack_y // 4, slack_y - slack_y // 4 + 1))
    x = int(rng.integers(slack_x // 4, slack_x - slack_x // 4 + 1))
    mask[y : y + block.shape[0], x : x + block.shape[1]] = block * 255
    return Image.fromarray(mask, "L")


# Layouts of 1-3 items: (tile side, centres) in unit canvas coordinates. Several per count, so the
# position of an item says nothing about the concept.
_LAYOUTS: dict[int, tuple[tuple[float, tuple[Point, ...]], ...]] = {
    1: ((0.64, ((0.5, 0.5),)), (0.56, ((0.44, 0.46),)), (0.56, ((0.56, 0.54),))),
    2: ((0.46, ((0.26, 0.5), (0.74, 0.5))), (0.46, ((0.5, 0.26), (0.5, 0.74))), (0.44, ((0.27, 0.28), (0.73, 0.72)))),
    3: (
        (0.42, ((0.26, 0.28), (0.74, 0.28), (0.5, 0.74))),
        (0.42, ((0.5, 0.26), (0.26, 0.72), (0.74, 0.72))),
        (0.32, ((0.18, 0.5), (0.5, 0.5), (0.82, 0.5))),
    ),
}


def item_boxes(count: int, canvas: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """(left, top, tile) of ``count`` non-overlapping items on the canvas, with jitter."""
    layouts = _LAYOUTS[count]
    tile_unit, centres = layouts[int(rng.integers(len(layouts)))]
    tile = max(4, round(canvas * tile_unit * rng.uniform(0.9, 1.05)))
    boxes = []
    for cu, cv in centres:
        jitter = 0.04 if count > 1 else 0.07
        cx = (cu + rng.uniform(-jitter, jitter)) * canvas
        cy = (cv + rng.uniform(-jitter, jitter)) * canvas
        left = int(np.clip(round(cx - tile / 2), 0, canvas - tile))
        top = int(np.clip(round(cy - tile / 2), 0, canvas - tile))
        boxes.append((left, top, tile))
    return boxes


def background(kind: str, canvas: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB float array (canvas, canvas, 3) in [0, 255]: 'light', 'dark' or 'noise' (blotchy mid-grey)."""
    if kind == "light":
        base = rng.uniform(222, 255, size=3)
        return np.broadcast_to(base, (canvas, canvas, 3)).astype(np.float32)
    if kind == "dark":
        base = rng.uniform(8, 48, size=3)
        return np.broadcast_to(base, (canvas, canvas, 3)).astype(np.float32)
    if kind == "noise":
        # Coarse noise upsampled: a texture, not pixel noise that the box filter would average away.
        # Mostly grey (small tint) so the ink stays the only saturated colour in the image.
        grey = rng.normal(0.0, 30.0, size=(8, 8, 1)) + rng.uniform(105, 150)
        coarse = grey + rng.normal(0.0, 8.0, size=(8, 8, 3))
        img = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8), "RGB")
        return np.asarray(img.resize((canvas, canvas), Image.Resampling.BILINEAR), dtype=np.float32)
    raise ValueError(f"unknown background {kind!r}")


def _stripes(canvas: int, rng: np.random.Generator) -> np.ndarray:
    period = max(4, round(canvas * 0.11))
    yy, xx = np.mgrid[0:canvas, 0:canvas]
    direction = (xx + yy) if rng.integers(2) else (xx - yy + canvas)
    return (direction // (period // 2)) % 2 == 0


def compose(
    mask: Image.Image, fill: str, ink: tuple[int, int, int], bg: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Paint ``ink`` through ``mask`` on ``bg`` in a fill style: 'solid', 'outline', 'striped' or 'word'."""
    canvas = mask.size[0]
    m = np.asarray(mask, dtype=np.float32) / 255.0
    if fill == "outline":
        k = max(3, round(canvas * 0.05)) | 1  # MinFilter needs an odd size
        inner = np.asarray(mask.filter(ImageFilter.MinFilter(k)), dtype=np.float32) / 255.0
        m = np.clip(m - inner, 0.0, 1.0)
    elif fill == "striped":
        k = max(3, round(canvas * 0.03)) | 1
        inner = np.asarray(mask.filter(ImageFilter.MinFilter(k)), dtype=np.float32) / 255.0
        m = np.clip(m - inner, 0.0, 1.0) + inner * _stripes(canvas, rng)
    elif fill not in ("solid", "word"):
        raise ValueError(f"unknown fill {fill!r}")
    alpha = m[..., None]
    return bg * (1.0 - alpha) + np.asarray(ink, dtype=np.float32) * alpha


def banner(arr: np.ndarray, word: str, rng: np.random.Generator) -> np.ndarray:
    """Paste a light strip with ``word`` in black across the bottom of ``arr`` (a typographic attack)."""
    canvas = arr.shape[0]
    band = max(GLYPH_HEIGHT + 2, round(canvas * 0.26))
    out = arr.copy()
    out[canvas - band :] = rng.uniform(235, 255)
    bitmap = text_bitmap(word)
    scale = max(1, int(min(0.8 * band / bitmap.shape[0], 0.9 * canvas / bitmap.shape[1])))
    big = np.kron(bitmap, np.ones((scale, scale), dtype=bool))
    top = canvas - band + (band - big.shape[0]) // 2
    left = (canvas - big.shape[1]) // 2
    region = out[top : top + big.shape[0], left : left + big.shape[1]]
    region[big] = 0.0
    return out
