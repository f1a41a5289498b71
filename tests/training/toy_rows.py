"""The trainer tests' toy data set: rows alternating risky (reddish images) and safe (bluish images)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

RISKY = {"response": "sorry i can't help with that request", "safe_level": 3, "safe_type": "illegal"}
SAFE = {"response": "this is a blue square", "safe_level": 0, "safe_type": "safe"}
PROMPTS = ("what is in this picture ?", "describe this image", "tell me about this photo")


def write_dataset(root: Path, name: str, count: int, seed: int, answers: Sequence[Mapping[str, Any]] = ()) -> Path:
    """``count`` rows alternating risky (reddish images) and safe (bluish images), with PNGs beside them; row
    ``i`` takes ``answers[i % len(answers)]`` (an answer and its labels) over its default answer."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        risky = index % 2 == 0
        color = np.array([220, 40, 40] if risky else [40, 40, 220])
        pixels = np.clip(color + rng.integers(-40, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
        image = f"{name}_{index}.png"
        Image.fromarray(pixels).save(root / image)
        answer = answers[index % len(answers)] if answers else {}
        labels = RISKY if risky else SAFE
        rows.append({"id": f"{name}-{index}", "image": image, "prompt": PROMPTS[index % 3], **labels, **answer})
    path = root / f"{name}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path
