"""The world's concepts: what a safe or risky image shows, how it is styled, and which label it carries.

Each risk type of :data:`psaguard.taxonomy.DEFAULT_TAXONOMY` has a bold visual concept (a symbol and a
typographic word); its *intensity* (1-3) is how many copies the image shows, and a table maps
(type, intensity) to the risk level. Safe images show coloured shapes, everyday objects or benign words.
Every concept comes in several styles (fill x background, or rendered word x background), drawn with
random colour shades, sizes, positions, rotations and layouts, so no single pixel pattern identifies a
label. A :class:`Scene` describes one image completely; :func:`render_scene` draws it deterministically.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image, ImageChops
from pydantic import BaseModel, ConfigDict, Field, model_validator

from psaguard.taxonomy import DEFAULT_TAXONOMY
from psaguard.training.world import draw

__all__ = [
    "ALL_STYLES",
    "BACKGROUNDS",
    "COLOURS",
    "NUMBER_WORDS",
    "RISK_CONCEPTS",
    "SAFE_NOUNS",
    "SAFE_WORDS",
    "SHAPE_FILLS",
    "RiskConcept",
    "Scene",
    "plural",
    "render_scene",
    "sample_risk_scene",
    "sample_safe_scene",
]

Fill = Literal["solid", "outline", "striped", "word"]
Background = Literal["light", "dark", "noise"]

# Saturated, well-separated hues: they stay distinct after a 32x32 downsample on every background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 35),
    "green": (30, 175, 60),
    "blue": (40, 90, 235),
    "yellow": (245, 205, 20),
    "orange": (250, 125, 15),
    "purple": (160, 50, 210),
}
NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three"}
SHAPE_FILLS: tuple[Fill, ...] = ("solid", "outline", "striped")
BACKGROUNDS: tuple[Background, ...] = ("light", "dark", "noise")
ALL_STYLES: tuple[str, ...] = tuple(f"{f}-{b}" for f in (*SHAPE_FILLS, "word") for b in BACKGROUNDS)
"""Every style name, ``fill-background``; 'word-*' styles render a word instead of a symbol."""

SAFE_NOUNS: tuple[str, ...] = (
    *("circle", "square", "triangle", "star"),
    *("house", "pill", "coin", "car", "tree", "cup", "person"),
)
SAFE_WORDS: tuple[str, ...] = ("sun", "cat", "dog", "boat", "fish", "milk", "book", "bird")
_PLURALS = {"person": "people"}
_WORD_CARD_SHARE = 0.2  # share of safe images that are word cards (the benign side of typography)
_RISK_WORD_SHARE = 0.25  # share of risk images drawn as a typographic word rather than a symbol


class RiskConcept(BaseModel):
    """The visual stand-in of one risk type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(description="Risk type code in DEFAULT_TAXONOMY, e.g. 'privacy'.")
    noun: str = Field(description="Symbol drawn for the concept (a key of draw.SHAPES), e.g. 'eye'.")
    word: str = Field(description="Word rendered for the typographic styles, lower case, e.g. 'spy'.")
    levels: dict[int, int] = Field(description="Risk level (1-3) for each intensity (1-3 copies in the image).")
    meaning: str = Field(description="What the symbol stands for, for the docs.")

    @model_validator(mode="after")
    def _check(self) -> RiskConcept:
        if sorted(self.levels) != [1, 2, 3] or not set(self.levels.values()) <= {1, 2, 3}:
            raise ValueError(f"{self.type}: levels must map intensities 1-3 to levels 1-3, got {self.levels}")
        DEFAULT_TAXONOMY.type_by_code(self.type)
        return self


_SAME = {1: 1, 2: 2, 3: 3}
RISK_CONCEPTS: dict[str, RiskConcept] = {
    c.type: c
    for c in (
        RiskConcept(type="politics", noun="flag", word="coup", levels=_SAME, meaning="partisan flags, a coup"),
        RiskConcept(type="illegal", noun="gun", word="gun", levels=_SAME, meaning="weapons"),
        RiskConcept(type="insults", noun="bubble", word="loser", levels=_SAME, meaning="an angry speech bubble"),
        RiskConcept(type="fairness", noun="scale", word="bias", levels=_SAME, meaning="a tilted, unfair scale"),
        RiskConcept(type="privacy", noun="eye", word="spy", levels=_SAME, meaning="a watching eye, spying"),
        # Misleading content is cautioned rather than refused outright: intensity 3 is still level 2.
        RiskConcept(
            type="misleading", noun="spiral", word="fake", levels={1: 1, 2: 2, 3: 2}, meaning="a hypnotic spiral"
        ),
    )
}
"""Risk type code -> its concept; covers every non-safe type of DEFAULT_TAXONOMY."""


def plural(noun: str) -> str:
    """English plural of a world noun."""
    return _PLURALS.get(noun, noun + "s")


class Scene(BaseModel):
    """Everything needed to draw one image, and to answer questions about it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    noun: str = Field(description="Drawn noun (a key of draw.SHAPES) or 'word' for a rendered word.")
    word: str | None = Field(None, description="The rendered word when noun is 'word', lower case.")
    colour: str = Field(description="Ink colour name (a key of COLOURS).")
    count: int = Field(ge=1, le=3, description="Copies of the noun, or lines of the word; a risk's intensity.")
    fill: Fill = Field(description="Fill style; 'word' exactly when noun is 'word'.")
    background: Background = Field(description="Background style.")
    risk_type: str | None = Field(None, description="Risk type code when the scene shows a risk concept.")
    banner: str | None = Field(None, description="Word on a strip pasted over the bottom (typographic attack).")
    seed: int = Field(ge=0, description="Seed of the jitter: shades, sizes, positions, rotations.")

    @model_validator(mode="after")
    def _check(self) -> Scene:
        if (self.noun == "word") != (self.fill == "word") or (self.noun == "word") != (self.word is not None):
            raise ValueError("a word scene needs noun='word', fill='word' and a word; other scenes none of them")
        if self.noun != "word" and self.noun not in draw.SHAPES:
            raise ValueError(f"unknown noun {self.noun!r}; known: {sorted(draw.SHAPES)}")
        if self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; known: {sorted(COLOURS)}")
        if self.risk_type is not None and self.risk_type not in RISK_CONCEPTS:
            raise ValueError(f"unknown risk type {self.risk_type!r}; known: {sorted(RISK_CONCEPTS)}")
        return self

    @property
    def style(self) -> str:
        """Style name, ``fill-background``."""
        return f"{self.fill}-{self.background}"

    @property
    def level(self) -> int:
        """Risk level of the image alone: 0 when safe, else the concept's level for this intensity."""
        return 0 if self.risk_type is None else RISK_CONCEPTS[self.risk_type].levels[self.count]

    @property
    def subject(self) -> str:
        """What the image shows: the word when it is a word card, else the noun."""
        return self.word if self.word is not None else self.noun


def render_scene(scene: Scene, size: int) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``size`` x ``size`` pixels; the same scene gives the same pixels."""
    if size < 8:
        raise ValueError(f"image size must be at least 8 pixels, got {size}")
    rng = np.random.default_rng(scene.seed)
    canvas = draw.canvas_size(size)
    bg = draw.background(scene.background, canvas, rng)
    if scene.word is not None:
        mask = draw.text_mask(scene.word, scene.count, canvas, rng)
    else:
        mask = Image.new("L", (canvas, canvas), 0)
        for left, top, tile in draw.item_boxes(scene.count, canvas, rng):
            item = draw.shape_mask(scene.noun, tile, float(rng.uniform(-12, 12)), bool(rng.integers(2)))
            region = (left, top, left + tile, top + tile)
            mask.paste(ImageChops.lighter(mask.crop(region), item), region)
    ink = tuple(int(v) for v in np.clip(np.asarray(COLOURS[scene.colour]) + rng.integers(-14, 15, size=3), 0, 255))
    arr = draw.compose(mask, scene.fill, ink, bg, rng)
    if scene.banner is not None:
        arr = draw.banner(arr, scene.banner, rng)
    image = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
    return image if canvas == size else image.resize((size, size), Image.Resampling.BOX)


def _pick_style(rng: np.random.Generator, fills: tuple[str, ...], styles: tuple[str, ...]) -> tuple[str, str]:
    options = [s for s in styles if s.split("-")[0] in fills]
    if not options:
        raise ValueError(f"no allowed style for fills {fills}; allowed styles: {styles}")
    fill, background = options[int(rng.integers(len(options)))].split("-")
    return fill, background


def sample_safe_scene(rng: np.random.Generator, styles: tuple[str, ...] = ALL_STYLES, noun: str | None = None) -> Scene:
    """A random safe scene in one of ``styles``; ``noun`` fixes the object ('word' for a word card)."""
    if noun is None:
        noun = "word" if rng.random() < _WORD_CARD_SHARE else SAFE_NOUNS[int(rng.integers(len(SAFE_NOUNS)))]
    word = SAFE_WORDS[int(rng.integers(len(SAFE_WORDS)))] if noun == "word" else None
    fill, background = _pick_style(rng, ("word",) if noun == "word" else SHAPE_FILLS, styles)
    return Scene(
        noun=noun,
        word=word,
        colour=list(COLOURS)[int(rng.integers(len(COLOURS)))],
        count=int(rng.integers(1, 4)),
        fill=fill,
        background=background,
        seed=int(rng.integers(2**31)),
    )


def sample_risk_scene(
    rng: np.random.Generator,
    styles: tuple[str, ...] = ALL_STYLES,
    risk_type: str | None = None,
    intensity: int | None = None,
) -> Scene:
    """A random scene of a risk concept (random type and intensity unless given) in one of ``styles``."""
    concept = RISK_CONCEPTS[risk_type or list(RISK_CONCEPTS)[int(rng.integers(len(RISK_CONCEPTS)))]]
    as_word = rng.random() < _RISK_WORD_SHARE and any(s.startswith("word-") for s in styles)
    fill, background = _pick_style(rng, ("word",) if as_word else SHAPE_FILLS, styles)
    return Scene(
        noun="word" if as_word else concept.noun,
        word=concept.word if as_word else None,
        colour=list(COLOURS)[int(rng.integers(len(COLOURS)))],
        count=intensity or int(rng.integers(1, 4)),
        fill=fill,
        background=background,
        risk_type=concept.type,
        seed=int(rng.integers(2**31)),
    )
