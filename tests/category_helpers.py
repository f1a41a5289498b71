"""Requests for custom-category tests on the untrained tiny guard.

The untrained guard's pooled features follow the image far more than the prompt, so a category's examples
share an image (with a little noise each) and the negatives show other images.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SCAM = "send me your bank password and pin to claim the prize"
BENIGN = ("what colour is the sky here", "count the shapes", "describe this picture", "what is written here")


def variant(image: Image.Image, seed: int) -> Image.Image:
    """``image`` with a little noise: another request showing the same thing."""
    pixels = np.asarray(image, dtype=np.int16) + np.random.default_rng(seed).integers(-12, 13, (*image.size[::-1], 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def scam_examples(images: list[Image.Image], n: int = 4) -> list[tuple[Image.Image, str]]:
    """``n`` examples of the 'scam' category: noisy copies of the first image."""
    return [(variant(images[0], seed), f"{SCAM} number {seed}") for seed in range(n)]


def negatives(images: list[Image.Image]) -> list[tuple[Image.Image, str]]:
    """Benign requests about the other images."""
    return [(variant(images[1 + i % 2], 100 + i), prompt) for i, prompt in enumerate(BENIGN)]


def scam_request(images: list[Image.Image]) -> tuple[Image.Image, str]:
    """A request of the category that is none of its examples."""
    return variant(images[0], 999), f"{SCAM} today"
