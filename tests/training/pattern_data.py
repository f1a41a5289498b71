"""A labelled image set in a style the synthetic world never uses, written for the small-data recipe tests.

Seven texture concepts (rings, checkerboards, stripes, crosses, frames, dot grids, zigzags) drawn in random
colours at random scale and offset on a noisy grey background, with four benign prompts and answers that
are not in the world's vocabulary. Five concepts are risky (one type each, at different levels), two safe;
the label depends on the picture only, so a head that learned nothing scores the majority baseline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CONCEPTS", "PROMPTS", "write_patterns"]

# concept -> (safe_level, safe_type)
CONCEPTS: dict[str, tuple[int, str]] = {
    "rings": (0, "safe"),
    "checkerboard": (0, "safe"),
    "stripes": (3, "illegal"),
    "cross": (2, "privacy"),
    "frames": (1, "insults"),
    "dots": (2, "misleading"),
    "zigzag": (3, "politics"),
}
PROMPTS = (
    "what can you see in this drawing",
    "please describe the pattern",
    "give me a short caption",
    "what does this picture show",
)
_SIZE = 32


def _draw(concept: str, rng: np.random.Generator) -> Image.Image:
    base = rng.integers(90, 160)
    noise = rng.integers(-25, 25, (_SIZE, _SIZE, 3))
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    ink = tuple(int(c) for c in rng.integers(0, 256, 3))
    step = int(rng.integers(5, 8))
    off = int(rng.integers(0, step))
    width = int(rng.integers(1, 3))
    if concept == "rings":
        cx, cy = rng.integers(12, 20, 2)
        for r in range(3, 16, step):
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=ink, width=width)
    elif concept == "checkerboard":
        for y in range(-off, _SIZE, step):
            for x in range(-off, _SIZE, step):
                if ((x + off) // step + (y + off) // step) % 2 == 0:
                    draw.rectangle((x, y, x + step - 1, y + step - 1), fill=ink)
    elif concept == "stripes":
        for y in range(off, _SIZE, step):
            draw.line((0, y, _SIZE, y), fill=ink, width=width + 1)
    elif concept == "cross":
        m = int(rng.integers(2, 8))
        draw.line((m, m, _SIZE - m, _SIZE - m), fill=ink, width=width + 2)
        draw.line((m, _SIZE - m, _SIZE - m, m), fill=ink, width=width + 2)
    elif concept == "frames":
        for m in range(off + 1, _SIZE // 2, step):
            draw.rectangle((m, m, _SIZE - 1 - m, _SIZE - 1 - m), outline=ink, width=width)
    elif concept == "dots":
        for y in range(off + 2, _SIZE, step):
            for x in range(off + 2, _SIZE, step):
                draw.ellipse((x - 1, y - 1, x + 1, y + 1), fill=ink)
    else:  # zigzag
        for y0 in range(off, _SIZE, step + 3):
            points = [(x, y0 + (step // 2 if (x // 4) % 2 else 0)) for x in range(0, _SIZE + 4, 4)]
            draw.line(points, fill=ink, width=width)
    return image


def write_patterns(root: Path, name: str, count: int, seed: int) -> Path:
    """``count`` rows (concepts in turn, prompts at random) as ``root/name.jsonl`` with PNGs beside it."""
    rng = np.random.default_rng(seed)
    names = list(CONCEPTS)
    rows = []
    for index in range(count):
        concept = names[index % len(names)]
        level, kind = CONCEPTS[concept]
        image = f"{name}-{index}.png"
        _draw(concept, rng).save(root / image)
        answer = f"a drawing of {concept}" if level == 0 else "sorry i will not talk about this drawing"
        prompt = PROMPTS[int(rng.integers(len(PROMPTS)))]
        rows.append(
            {
                "id": f"{name}-{index}",
                "image": image,
                "prompt": prompt,
                "response": answer,
                "safe_level": level,
                "safe_type": kind,
            }
        )
    path = root / f"{name}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path
