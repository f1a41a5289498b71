"""A contact sheet of the world's concepts and styles, for the docs and for eyeballing the generator."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from psaguard.training.world.concepts import (
    ALL_STYLES,
    COLOURS,
    RISK_CONCEPTS,
    SAFE_NOUNS,
    SAFE_WORDS,
    Scene,
    render_scene,
)

__all__ = ["sample_sheet"]

_LABEL_WIDTH = 84


def _row_scenes(row: int, label: str, rng: np.random.Generator) -> list[Scene]:
    """One scene per style: a risk concept (intensity cycling 1-3) or a rotating set of safe subjects."""
    scenes = []
    for col, style in enumerate(ALL_STYLES):
        fill, background = style.split("-")
        colour = list(COLOURS)[(row + col) % len(COLOURS)]
        count = 1 + col % 3
        seed = int(rng.integers(2**31))
        if label in RISK_CONCEPTS:
            concept = RISK_CONCEPTS[label]
            noun, word = ("word", concept.word) if fill == "word" else (concept.noun, None)
            risk = label
        else:
            nouns = SAFE_NOUNS[:4] if label == "shapes" else SAFE_NOUNS[4:]
            noun = "word" if fill == "word" else nouns[col % len(nouns)]
            word = SAFE_WORDS[(row + col) % len(SAFE_WORDS)] if fill == "word" else None
            risk = None
        scenes.append(
            Scene(
                noun=noun,
                word=word,
                colour=colour,
                count=count,
                fill=fill,
                background=background,
                risk_type=risk,
                seed=seed,
            )
        )
    return scenes


def sample_sheet(image_size: int = 32, cell: int = 96, seed: int = 0) -> Image.Image:
    """Grid of images: rows are the six risk concepts then safe shapes and objects, columns the styles.

    Images are rendered at ``image_size`` (what the model sees) and shown at ``cell`` pixels with
    nearest-neighbour scaling, so a 32x32 sheet shows the real pixels.
    """
    rng = np.random.default_rng(seed)
    labels = [*RISK_CONCEPTS, "shapes", "objects"]
    gap = 4
    sheet = Image.new("RGB", (_LABEL_WIDTH + len(ALL_STYLES) * (cell + gap), 18 + len(labels) * (cell + gap)), "white")
    pen = ImageDraw.Draw(sheet)
    for col, style in enumerate(ALL_STYLES):
        pen.text((_LABEL_WIDTH + col * (cell + gap) + 2, 3), style, fill="black")
    for row, label in enumerate(labels):
        top = 18 + row * (cell + gap)
        pen.text((4, top + cell // 2 - 6), label, fill="black")
        for col, scene in enumerate(_row_scenes(row, label, rng)):
            image = render_scene(scene, image_size).resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(image, (_LABEL_WIDTH + col * (cell + gap), top))
    return sheet
