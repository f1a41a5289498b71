"""Build the world on disk: PNG images and train / val / test / attack JSONL in the trainer's row schema.

Rows are drawn in *groups* so that related rows land in the same split: a joint-risk group is the risky
row plus two safe twins (the same prompt next to another image; the same image with another prompt).
Every group has its own random generator seeded from (seed, split, group), so the world is a pure
function of its :class:`WorldSpec`: the same spec writes byte-identical files.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from psaguard.taxonomy import DEFAULT_TAXONOMY
from psaguard.training.world.concepts import (
    ALL_STYLES,
    SHAPE_FILLS,
    Scene,
    render_scene,
)
from psaguard.training.world.groups import GROUPS, Draft, Kind, Pool, attack_draft, choose_kind
from psaguard.training.world.prompts import (
    HARMFUL_INTENTS,
    JOINT_RULES,
    QUESTIONS,
    all_template_ids,
    default_held_out_templates,
    harmful_answer,
    respond,
)

__all__ = [
    "SPLITS",
    "KindMix",
    "RowMeta",
    "WorldRow",
    "WorldSpec",
    "WorldSummary",
    "build_world",
    "read_rows",
    "read_summary",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test", "attack")


class KindMix(BaseModel):
    """Relative weights of the row groups; a joint group writes three rows (one risky, two safe twins)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    benign: float = Field(0.35, ge=0, description="Safe image + benign question.")
    image_risk: float = Field(0.3, ge=0, description="Risk-concept image + question; the image decides.")
    harmful: float = Field(0.15, ge=0, description="Safe image + harmful request; the text decides.")
    joint: float = Field(0.2, ge=0, description="Trigger image + intent clause, with two safe twins.")


class WorldSpec(BaseModel):
    """Everything that determines a world; the same spec builds byte-identical files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: int = Field(FORMAT_VERSION, description="Version of the world's file format.")
    seed: int = Field(0, ge=0, description="Master seed of every random choice.")
    image_size: int = Field(64, ge=8, le=1024, description="Side of the written PNGs in pixels.")
    n_train: int = Field(1200, ge=0, description="Rows in train.jsonl.")
    n_val: int = Field(200, ge=0, description="Rows in val.jsonl (same styles and templates as train).")
    n_test: int = Field(400, ge=0, description="Rows in test.jsonl (all styles and templates, held-out included).")
    n_attack: int = Field(200, ge=0, description="Risky test-like rows under adversarial suffixes or text banners.")
    mix: KindMix = Field(default_factory=KindMix, description="Weights of the row kinds.")
    held_out_styles: tuple[str, ...] = Field(
        ("striped-dark", "word-noise"), description="Styles never drawn in train or val."
    )
    held_out_templates: tuple[str, ...] = Field(
        default_factory=default_held_out_templates,
        description="Template ids never used in train or val (default: paraphrase 2 of every template).",
    )
    harmful_answers: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of risky requests (train, val, test) that also get a row answering them harmfully. "
        "Above 0, every row labels its answer for the response head (the safe answers, cautions and refusals "
        "harmless; the complying answers harmful, at the request's level and type); 0 writes no response labels.",
    )

    @model_validator(mode="after")
    def _check(self) -> WorldSpec:
        _check_known("held-out styles", self.held_out_styles, ALL_STYLES)
        _check_known("held-out templates", self.held_out_templates, all_template_ids())
        _check_styles_left(self.train_styles)
        _check_templates_left(set(self.held_out_templates))
        if sum(self.mix.model_dump().values()) <= 0:
            raise ValueError("mix weights must not all be zero")
        return self

    @property
    def train_styles(self) -> tuple[str, ...]:
        return tuple(s for s in ALL_STYLES if s not in self.held_out_styles)


def _check_known(what: str, given: Sequence[str], known: Sequence[str]) -> None:
    if unknown := sorted(set(given) - set(known)):
        raise ValueError(f"unknown {what} {unknown}; known: {list(known)}")


def _check_styles_left(train_styles: Sequence[str]) -> None:
    """Every shape fill and the word style keep at least one style for training."""
    for family in (*SHAPE_FILLS, "word"):
        if not any(s.startswith(family + "-") for s in train_styles):
            raise ValueError(f"held-out styles leave no '{family}' style for training")


def _check_templates_left(held: set[str]) -> None:
    """Every question kind, harmful intent and joint rule keeps at least one template for training."""
    groups = [[q.id for q in QUESTIONS if q.asks == asks] for asks in ("colour", "count", "noun", "describe")]
    groups += [[f"{h.id}.{k}" for k in range(len(h.texts))] for h in HARMFUL_INTENTS]
    groups += [[f"{j.id}.{k}" for k in range(len(j.clauses))] for j in JOINT_RULES]
    for ids in groups:
        if set(ids) <= held:
            raise ValueError(f"held-out templates leave none of {ids} for training")


class RowMeta(BaseModel):
    """What a row is made of, for analysis; the trainer ignores it."""

    model_config = ConfigDict(extra="forbid")

    kind: Kind = Field(description="benign | image_risk | harmful | joint.")
    style: str = Field(description="Style of the image, 'fill-background'.")
    template: str = Field(description="Template id of the prompt (question, harmful paraphrase or joint clause).")
    question: str | None = Field(None, description="Question template id appended to a joint clause.")
    image_type: str = Field(description="Risk type shown by the image alone ('safe' if none).")
    image_level: int = Field(description="Risk level of the image alone.")
    noun: str = Field(description="Drawn noun, or 'word'.")
    word: str | None = Field(None, description="Rendered word, if any.")
    colour: str = Field(description="Ink colour.")
    count: int = Field(description="Copies or lines drawn.")
    answer: str | None = Field(None, description="Exact short answer to the question in the prompt, if any.")
    held_out: bool = Field(description="True if the row uses a held-out style or template.")
    twin_of: str | None = Field(None, description="Id of the joint row this safe row mirrors.")
    attack: Literal["suffix", "typo"] | None = Field(None, description="Attack applied (attack split only).")


class WorldRow(BaseModel):
    """One JSONL row in the trainer's schema."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Unique row id, '<split>-<n>'.")
    image: str = Field(description="Image path relative to the world directory.")
    prompt: str = Field(description="User text, without an <image> placeholder.")
    response: str = Field(description="Target assistant response (a harmful one when response_harmful is True).")
    response_harmful: bool | None = Field(
        None, description="Whether the answer is harmful (response labels; None when the world writes none)."
    )
    response_level: int | None = Field(None, ge=0, le=3, description="Risk level of the answer.")
    response_type: int | None = Field(None, ge=0, le=6, description="Risk type id of the answer.")
    safe_level: int = Field(ge=0, le=3, description="Risk level id in DEFAULT_TAXONOMY.")
    safe_type: int = Field(ge=0, le=6, description="Risk type id in DEFAULT_TAXONOMY.")
    meta: RowMeta = Field(description="How the row was made.")


class WorldSummary(BaseModel):
    """What build_world wrote (also saved as world.json)."""

    model_config = ConfigDict(extra="forbid")

    spec: WorldSpec = Field(description="The spec that built the world.")
    rows: dict[str, int] = Field(description="Rows per split.")
    images: int = Field(description="PNG files written.")
    kinds: dict[str, dict[str, int]] = Field(description="Rows per kind, per split.")
    types: dict[str, dict[str, int]] = Field(description="Rows per risk type code, per split.")
    levels: dict[str, dict[str, int]] = Field(description="Rows per risk level, per split.")


def _split_rows(spec: WorldSpec, split: str, n_rows: int) -> list[tuple[WorldRow, Scene]]:
    """The rows of one split, each with the scene its image shows (twins share a scene and a file)."""
    pool = _pool(spec, split)
    weights = _kind_weights(spec, split)
    out: list[tuple[WorldRow, Scene]] = []
    group = 0
    labels = spec.harmful_answers > 0 and split != "attack"
    while len(out) < n_rows:
        rng = np.random.default_rng([spec.seed, SPLITS.index(split), group])
        kind = choose_kind(rng, weights, n_rows - len(out), one_row=split == "attack")
        scenes, drafts = _group(rng, kind, pool, spec, split, len(out))
        first_id = len(out)
        image_of: dict[int, str] = {}
        for draft in drafts:
            row_id = f"{split}-{len(out):06d}"
            image_of.setdefault(draft.scene, f"images/{row_id}.png")
            scene = scenes[draft.scene]
            out.append((_row(row_id, image_of[draft.scene], scene, draft, pool, split, first_id, labels), scene))
        group += 1
    return out[:n_rows]


def _pool(spec: WorldSpec, split: str) -> Pool:
    """Train and val draw the training styles and templates only; test and attack draw all of them."""
    train_like = split in ("train", "val")
    return Pool(
        styles=spec.train_styles if train_like else ALL_STYLES,
        held_styles=frozenset(spec.held_out_styles),
        held_templates=frozenset(spec.held_out_templates),
        heldout_allowed=not train_like,
    )


def _kind_weights(spec: WorldSpec, split: str) -> dict[str, float]:
    weights = spec.mix.model_dump()
    if split == "attack":  # attacks only make sense on risky requests
        weights["benign"] = 0.0
        if sum(weights.values()) <= 0:
            weights["image_risk"] = 1.0
    return weights


def _group(
    rng: np.random.Generator, kind: Kind, pool: Pool, spec: WorldSpec, split: str, index: int
) -> tuple[list[Scene], list[Draft]]:
    """One group's scenes and drafts: an attack keeps the risky row only; with ``harmful_answers``, risky
    rows may get a twin answered harmfully."""
    scenes, drafts = GROUPS[kind](rng, pool)
    if split == "attack":
        scenes, attacked = attack_draft(rng, index, scenes, drafts[0])
        return scenes, [attacked]
    if spec.harmful_answers > 0:  # drawn after the group's own choices, which stay as without it
        drafts += [
            replace(d, harmful_answer=True, twin=True)
            for d in list(drafts)
            if d.level > 0 and rng.random() < spec.harmful_answers
        ]
    return scenes, drafts


def _row(
    row_id: str, image: str, scene: Scene, draft: Draft, pool: Pool, split: str, first: int, labels: bool = False
) -> WorldRow:
    templates = [draft.template] + ([draft.question] if draft.question else [])
    type_id = DEFAULT_TAXONOMY.type_by_code(draft.type_code).id
    if draft.harmful_answer:
        response = harmful_answer(draft.type_code)
        response_labels = {"response_harmful": True, "response_level": draft.level, "response_type": type_id}
    else:
        response = respond(draft.level, draft.type_code, draft.answer)
        response_labels = {"response_harmful": False} if labels else {}
    return WorldRow(
        id=row_id,
        image=image,
        prompt=draft.prompt,
        response=response,
        **response_labels,
        safe_level=draft.level,
        safe_type=DEFAULT_TAXONOMY.type_by_code(draft.type_code).id,
        meta=RowMeta(
            kind=draft.kind,
            style=scene.style,
            template=draft.template,
            question=draft.question,
            image_type=scene.risk_type or DEFAULT_TAXONOMY.safe_type,
            image_level=scene.level,
            noun=scene.noun,
            word=scene.word,
            colour=scene.colour,
            count=scene.count,
            answer=draft.answer,
            held_out=scene.style in pool.held_styles or any(t in pool.held_templates for t in templates),
            twin_of=f"{split}-{first:06d}" if draft.twin else None,
            attack=None if split != "attack" else ("typo" if scene.banner else "suffix"),
        ),
    )


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_world(out_dir: str | Path, spec: WorldSpec | None = None) -> WorldSummary:
    """Write the world of ``spec`` under ``out_dir``: images/*.png, {train,val,test,attack}.jsonl, world.json."""
    spec = spec or WorldSpec()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    sizes = {"train": spec.n_train, "val": spec.n_val, "test": spec.n_test, "attack": spec.n_attack}
    counts: dict[str, dict[str, Counter[str]]] = {"kinds": {}, "types": {}, "levels": {}}
    images = 0
    for split in SPLITS:
        rows = _split_rows(spec, split, sizes[split])
        written = _write_images(out, rows, spec.image_size)
        images += written
        lines = [json.dumps(_row_json(row), ensure_ascii=False) for row, _ in rows]
        _write_atomic(out / f"{split}.jsonl", ("\n".join(lines) + "\n" if lines else "").encode())
        counts["kinds"][split] = Counter(row.meta.kind for row, _ in rows)
        counts["types"][split] = Counter(DEFAULT_TAXONOMY.types[row.safe_type].code for row, _ in rows)
        counts["levels"][split] = Counter(str(row.safe_level) for row, _ in rows)
        logger.info("world: wrote %d %s rows (%d images)", len(rows), split, written)
    summary = WorldSummary(
        spec=spec,
        rows=sizes,
        images=images,
        **{key: {s: dict(sorted(c.items())) for s, c in per.items()} for key, per in counts.items()},
    )
    _write_atomic(out / "world.json", summary.model_dump_json(indent=2).encode())
    return summary


def _write_images(out: Path, rows: Sequence[tuple[WorldRow, Scene]], size: int) -> int:
    """Render each image file the rows name once (twins share one); the number written."""
    written: set[str] = set()
    for row, scene in rows:
        if row.image not in written:
            render_scene(scene, size).save(out / row.image, format="PNG", compress_level=6)
            written.add(row.image)
    return len(written)


def _row_json(row: WorldRow) -> dict[str, object]:
    """The row as written: response labels only where the world labels answers."""
    data = row.model_dump(mode="json")
    for key in ("response_harmful", "response_level", "response_type"):
        if data[key] is None:
            del data[key]
    return data


def read_rows(world_dir: str | Path, split: str) -> list[WorldRow]:
    """Load and validate the rows of one split of a built world."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {list(SPLITS)}")
    path = Path(world_dir) / f"{split}.jsonl"
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            rows.append(WorldRow.model_validate_json(line))
        except ValueError as err:
            raise ValueError(f"{path}:{number}: invalid world row: {err}") from err
    return rows


def read_summary(world_dir: str | Path) -> WorldSummary:
    """Load the ``world.json`` of a built world (its spec and counts)."""
    path = Path(world_dir) / "world.json"
    try:
        return WorldSummary.model_validate_json(path.read_bytes())
    except ValueError as err:
        raise ValueError(f"{path}: invalid world summary: {err}") from err
