"""Export a world run's trained tiny model and guard as the assets ``psaguard demo`` ships with.

The Stage II LoRA adapter is merged into the base weights, so the demo needs neither peft nor the
training extra; the guard is saved without an adapter. A few test rows (one per kind, drawn
at random with a seed, with their images) go along as the demo's examples. Regenerate with::

    psaguard world run --preset cpu --out runs/world --report-dir docs --export-demo guard/assets/world_demo
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

from psaguard.cli.demo import HARMFUL_ANSWER
from psaguard.guard import SafetyGuard
from psaguard.training.world.build import WorldRow, read_rows

__all__ = [
    "DEMO_KINDS",
    "export_demo_assets",
    "load_trained_guard",
    "sample_demo_rows",
    "write_demo_examples",
]

logger = logging.getLogger(__name__)

DEMO_KINDS = ("benign", "image_risk", "harmful", "joint", "joint twin")
"""The kinds of request the demo shows, one row each ('joint twin' is a joint row's safe twin)."""


def _kind(row: WorldRow) -> str:
    return "joint twin" if row.meta.twin_of is not None else row.meta.kind


def sample_demo_rows(rows: list[WorldRow], seed: int) -> list[WorldRow]:
    """One row of each :data:`DEMO_KINDS` drawn at random (seeded: the same rows for the same seed and split),
    plus one request answered harmfully at level 1 (a request the policy lets through with a hint), for the
    demo's answer monitor. Rows are drawn whatever the guard makes of them."""
    rng = random.Random(seed)
    plain = [r for r in rows if r.response_harmful is not True]
    picked: list[WorldRow] = []
    for kind in DEMO_KINDS:
        candidates = _candidates(plain, kind, picked[-1] if picked else None)
        if candidates:
            picked.append(rng.choice(candidates))
    harmful = [r for r in rows if r.response_harmful is True and r.safe_level == 1]
    if harmful:
        picked.append(rng.choice(harmful))
    return picked


def _candidates(plain: list[WorldRow], kind: str, last: WorldRow | None) -> list[WorldRow]:
    """The rows a demo row of ``kind`` is drawn from; for 'joint twin', the twins of the row drawn ``last``
    (the joint row), so the demo shows the pair."""
    if kind == "joint twin":
        return _twins(plain, last) or _of_kind(plain, kind)
    return _of_kind(plain, kind)


def _twins(plain: list[WorldRow], row: WorldRow | None) -> list[WorldRow]:
    return [] if row is None else [r for r in plain if r.meta.twin_of == row.id]


def _of_kind(plain: list[WorldRow], kind: str) -> list[WorldRow]:
    """The rows of ``kind``; image-risk ones at level 3 only."""
    return [r for r in plain if _kind(r) == kind and (kind != "image_risk" or r.safe_level == 3)]


def write_demo_examples(rows: list[WorldRow], world_dir: Path, dest: Path, seed: int) -> Path:
    """Write ``dest/examples.jsonl`` and its images: :func:`sample_demo_rows` of test ``rows``."""
    if (dest / "images").exists():
        shutil.rmtree(dest / "images")
    (dest / "images").mkdir(parents=True)
    lines = []
    for row in sample_demo_rows(rows, seed):
        image = f"images/{Path(row.image).name}"
        shutil.copyfile(Path(world_dir) / row.image, dest / image)
        kind = HARMFUL_ANSWER if row.response_harmful else _kind(row)
        record = {"id": row.id, "kind": kind, "image": image, "prompt": row.prompt, "expected": row.response}
        lines.append(json.dumps({**record, "level": row.safe_level, "type": row.safe_type}) + "\n")
    path = dest / "examples.jsonl"
    path.write_text("".join(lines))
    return path


def load_trained_guard(base_dir: Path, guard_dir: Path, *, adapter: bool) -> SafetyGuard:
    """The guard saved in ``guard_dir`` on the base VLM saved in ``base_dir`` (with its LoRA if ``adapter``)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(base_dir).eval()
    processor = AutoProcessor.from_pretrained(base_dir)
    return SafetyGuard.from_pretrained(guard_dir, model, processor, load_adapter=adapter)


def export_demo_assets(
    base_dir: Path,
    guard_dir: Path,
    world_dir: Path,
    dest: Path,
    headline: dict[str, float] | None = None,
    seed: int = 0,
) -> Path:
    """Write ``dest/model`` (base + merged LoRA), ``dest/guard`` and ``dest/examples.jsonl`` with images.

    ``headline`` (e.g. :meth:`WorldMetrics.headline`) goes to ``dest/headline.json``, so the demo quotes the
    run's own test-split numbers. The examples are drawn at random with ``seed`` (:func:`sample_demo_rows`).
    """
    guard = load_trained_guard(base_dir, guard_dir, adapter=True)
    processor = guard.processor
    merged = guard.model.merge_and_unload() if hasattr(guard.model, "merge_and_unload") else guard.model
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    merged.save_pretrained(dest / "model")
    processor.save_pretrained(dest / "model")
    guard.save_pretrained(dest / "guard")
    write_demo_examples(read_rows(world_dir, "test"), world_dir, dest, seed)
    if headline is not None:
        (dest / "headline.json").write_text(json.dumps(headline, indent=2) + "\n")
    logger.info("demo assets written to %s", dest)
    return dest
