"""Retrain the shipped demo guard on fresh world rows, with a response head, for the fixed demo model.

``psaguard world demo-guard`` keeps the demo's tiny LLaVA (``psaguard/assets/world_demo/model``, so the
guard's model fingerprint still matches) and continues the shipped guard with a Stage I run:

1. build a world with harmful answers (``harmful_answers``) and as many train rows as the run consumes
   (``steps x batch_size``: every step sees fresh rows, none is repeated);
2. start from the shipped guard's weights plus a response head (fresh if it has none; its ``llm_tokens``, which
   the merged Stage II LoRA was trained with, stay as they are: Stage I here has no LM loss);
3. train the safety modules on request and answer labels, keep the best step on the val split, calibrate;
4. score the old and the new guard side by side on the same test split (request type macro-F1, response
   F1, refusal and over-refusal of guarded generation) and export the new guard, ``headline.json`` and
   examples picked at random (seeded) from the test split.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from psaguard.guard import SafetyGuard
from psaguard.training.config import Stage1Config
from psaguard.training.data import Example, read_jsonl
from psaguard.training.evaluate import evaluate_guard
from psaguard.training.stage1 import train_stage1
from psaguard.training.world.build import WorldRow, WorldSpec, build_world, read_rows
from psaguard.training.world.demo_assets import write_demo_examples
from psaguard.training.world.runs import StepClock, torch_threads, train_losses
from psaguard.training.world.scoring import (
    GuardedAnswer,
    answer_rows,
    refusal_rate,
    request_examples,
    request_rows,
)

__all__ = ["DemoGuardResult", "DemoGuardSpec", "resave_guard", "retrain_demo_guard", "score_guard"]

logger = logging.getLogger(__name__)


class DemoGuardSpec(BaseModel):
    """What determines a demo-guard retraining run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, ge=0, description="Seed of the world, the run and the demo's example pick.")
    steps: int = Field(1500, ge=1, description="Stage I optimizer steps.")
    batch_size: int = Field(16, ge=1, description="Rows per step; the world has steps x batch_size fresh train rows.")
    lr: float = Field(1e-2, gt=0, description="Peak learning rate.")
    warmup: int = Field(20, ge=0, description="Linear warm-up steps.")
    harmful_answers: float = Field(0.5, gt=0, le=1, description="WorldSpec.harmful_answers (response labels).")
    image_size: int = Field(32, ge=8, description="Image side; the demo model was trained on 32-pixel worlds.")
    n_val: int = Field(200, ge=1, description="Val rows (best step and calibration).")
    n_test: int = Field(600, ge=1, description="Test rows (scores and the demo's examples).")
    max_new_tokens: int = Field(24, ge=1, description="Greedy tokens per guarded answer.")
    threads: int | None = Field(1, ge=1, description="torch CPU threads.")


class GuardScores(BaseModel):
    """One guard's numbers on the test split."""

    model_config = ConfigDict(extra="forbid")

    type_macro_f1: float = Field(description="Request type macro-F1 (rows with a harmless answer: no duplicates).")
    level_macro_f1: float = Field(description="Request level macro-F1 on the same rows.")
    refusal_unsafe: float = Field(description="Guarded generation: refusals / unsafe requests.")
    over_refusal_safe: float = Field(description="Guarded generation: refused or hinted safe requests / safe ones.")
    response_f1: float | None = Field(None, description="Response-harm F1 on every labelled answer (None: no head).")
    response_precision: float | None = Field(None, description="Response-harm precision.")
    response_recall: float | None = Field(None, description="Response-harm recall.")
    response_fpr: float | None = Field(None, description="Response-harm false-positive rate.")


class DemoGuardResult(BaseModel):
    """What a run measured and wrote."""

    model_config = ConfigDict(extra="forbid")

    spec: DemoGuardSpec = Field(description="The run's spec.")
    rows: dict[str, int] = Field(description="Rows per split of the world.")
    old: GuardScores = Field(description="The guard the run started from.")
    new: GuardScores = Field(description="The retrained guard.")
    head_loss: tuple[float, float] = Field(description="Stage I head loss, first and last logged step.")
    seconds: dict[str, float] = Field(description="Wall time per phase.")
    guard_dir: Path = Field(description="The retrained guard.")


def score_guard(guard: SafetyGuard, world_dir: Path, rows: list[WorldRow], max_new_tokens: int) -> GuardScores:
    """Score ``guard`` on test ``rows``: request heads on rows without a harmful answer, answers on all."""
    examples, _ = read_jsonl(world_dir / "test.jsonl", image_root=world_dir)
    report = evaluate_guard(guard, request_examples(examples))
    plain = request_rows(rows)
    answers = answer_rows(guard, plain, world_dir, max_new_tokens=max_new_tokens)
    numbers: dict[str, Any] = {
        "type_macro_f1": report.type.macro_f1,
        "level_macro_f1": report.level.macro_f1,
        **_refusal_numbers(answers, plain),
        **_response_numbers(guard, examples),
    }
    return GuardScores(**{k: round(v, 4) for k, v in numbers.items()})


def _refusal_numbers(answers: list[GuardedAnswer], rows: list[WorldRow]) -> dict[str, float]:
    """Refusals of the unsafe requests and over-refusals (hints counted) of the safe ones."""
    level = {r.id: r.safe_level for r in rows}
    return {
        "refusal_unsafe": refusal_rate([a for a in answers if level[a.row_id] > 0]),
        "over_refusal_safe": refusal_rate([a for a in answers if level[a.row_id] == 0], count_hints=True),
    }


def _response_numbers(guard: SafetyGuard, examples: list[Example]) -> dict[str, float]:
    """The response head's detection numbers on every example; none for a guard without the head."""
    if guard.modules.response_head is None:
        return {}
    response = evaluate_guard(guard, examples).response
    if response is None:
        return {}
    d = response.detection
    return {"response_f1": d.f1, "response_precision": d.precision, "response_recall": d.recall, "response_fpr": d.fpr}


def resave_guard(model_dir: Path, guard_dir: Path, out: Path, *, response_head: bool) -> Path:
    """Save the guard of ``guard_dir`` to ``out`` with or without a response head (an added one is fresh, a
    removed one dropped; every other weight as saved)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(model_dir)
    old = SafetyGuard.from_pretrained(guard_dir, LlavaForConditionalGeneration.from_pretrained(model_dir), processor)
    head = old.config.head.model_copy(update={"response_head": response_head})
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    guard = SafetyGuard.attach(model, processor, old.config.model_copy(update={"head": head}))
    weights = {k: v for k, v in old.modules.state_dict().items() if response_head or not k.startswith("response_head.")}
    missing, unexpected = guard.modules.load_state_dict(weights, strict=False)
    if unexpected or any(not name.startswith("response_head.") for name in missing):
        raise RuntimeError(f"guard weights do not fit: missing {missing}, unexpected {unexpected}")
    return guard.save_pretrained(out)


def retrain_demo_guard(
    spec: DemoGuardSpec, out_dir: str | Path, model_dir: Path, guard_dir: Path, export: Path | None = None
) -> DemoGuardResult:
    """Run the retraining into ``out_dir`` (world/, init-guard/, stage1/, demo_guard.json); export to ``export``.

    ``export`` (e.g. ``guard/assets/world_demo``) gets the new ``guard/``, ``headline.json`` and the examples;
    its ``model/`` is left as it is (the run trains for that model).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch_threads(spec.threads):
        return _retrain(spec, out, model_dir, guard_dir, export)


def _retrain(spec: DemoGuardSpec, out: Path, model_dir: Path, guard_dir: Path, export: Path | None) -> DemoGuardResult:
    clock = StepClock("demo guard")
    world = WorldSpec(
        seed=spec.seed,
        image_size=spec.image_size,
        n_train=spec.steps * spec.batch_size,
        n_val=spec.n_val,
        n_test=spec.n_test,
        n_attack=0,
        harmful_answers=spec.harmful_answers,
    )
    world_dir = out / "world"
    summary = build_world(world_dir, world)
    test_rows = read_rows(world_dir, "test")
    clock.lap("world")
    init = resave_guard(model_dir, guard_dir, out / "init-guard", response_head=True)
    cfg = Stage1Config(
        model=str(model_dir),
        train_data=world_dir / "train.jsonl",
        eval_data=world_dir / "val.jsonl",
        eval_every=max(1, spec.steps // 15),
        early_stopping={"metric": "macro_f1", "patience": None},
        output_dir=out / "stage1",
        init_guard=init,
        num_safe=None,
        lm_loss_weight=0.0,
        max_steps=spec.steps,
        batch_size=spec.batch_size,
        grad_accum=1,
        lr=spec.lr,
        warmup_steps=spec.warmup,
        seed=spec.seed,
        checkpoint_every=spec.steps + 1,
        log_every=max(1, spec.steps // 20),
        progress_bar=False,
        plots=False,
        cpu=True,
    )
    stage1_dir = train_stage1(cfg)
    clock.lap("stage I")
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    old = score_guard(
        SafetyGuard.from_pretrained(guard_dir, model, processor), world_dir, test_rows, spec.max_new_tokens
    )
    guard = SafetyGuard.from_pretrained(stage1_dir, model, processor)
    new = score_guard(guard, world_dir, test_rows, spec.max_new_tokens)
    clock.lap("scoring")
    result = DemoGuardResult(
        spec=spec,
        rows=summary.rows,
        old=old,
        new=new,
        head_loss=train_losses(stage1_dir),
        seconds=clock.timings,
        guard_dir=stage1_dir,
    )
    (out / "demo_guard.json").write_text(result.model_dump_json(indent=2) + "\n")
    if export is not None:
        if (export / "guard").exists():
            shutil.rmtree(export / "guard")
        guard.save_pretrained(export / "guard")
        write_demo_examples(test_rows, world_dir, export, seed=spec.seed)
        headline = {
            "type_macro_f1": round(new.type_macro_f1, 3),
            "refusal_unsafe": round(new.refusal_unsafe, 3),
            "over_refusal_safe": round(new.over_refusal_safe, 3),
        }
        if new.response_f1 is not None:
            headline["response_f1"] = round(new.response_f1, 3)
        (export / "headline.json").write_text(json.dumps(headline, indent=2) + "\n")
    return result
