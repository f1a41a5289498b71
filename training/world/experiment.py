"""The world experiment: build a world, teach a tiny base VLM its safe VQA, train a guard, and report.

:func:`run_experiment` runs every step of ``psaguard world run`` for an :class:`ExperimentSpec`, each a
function of its own:

1. build the world (:func:`~psaguard.training.world.build.build_world`) and a tiny base VLM with the world
   vocabulary, taught the world's safe VQA (:mod:`~psaguard.training.world.base_model`);
2. Stage I twice with the project's trainer, text-aware ``mean`` pooling (the guard) and the paper's
   ``first`` pooling (the ablation), then a short Stage II (LoRA, or QLoRA with ``qlora``) on the first;
3. score on the held-out test split (``psaguard eval``'s report: metrics, calibration, threshold sweep)
   and the attack split (:mod:`~psaguard.training.world.scoring`); in a world that labels answers
   (``harmful_answers``), also the response head and the streaming monitor on the test answers;
4. write the report (:func:`~psaguard.training.world.report.write_report`) and ``metrics.json``.

The run leaves no global state behind: torch's CPU thread count is restored afterwards, and every random
draw of the world and the base model comes from generators seeded by the spec (the two stages seed as the
trainer does).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from psaguard.guard import SafetyGuard
from psaguard.taxonomy import DEFAULT_TAXONOMY
from psaguard.training.config import LoraSettings, QuantConfig, Stage1Config, Stage2Config
from psaguard.training.data import Example, read_jsonl
from psaguard.training.evaluate import EvalReport, ResponseReport, evaluate_guard, evaluate_responses
from psaguard.training.stage1 import train_stage1
from psaguard.training.stage2 import train_stage2
from psaguard.training.world.base_model import (
    SftResult,
    build_base_vlm,
    pretrain_vision,
    train_safe_vqa,
    vqa_accuracy,
)
from psaguard.training.world.build import WorldRow, build_world, read_rows
from psaguard.training.world.demo_assets import load_trained_guard
from psaguard.training.world.experiment_spec import ExperimentSpec, StageSettings
from psaguard.training.world.report import GenerationEval, HeadEval, MonitorEval, WorldMetrics, write_report
from psaguard.training.world.runs import StepClock, torch_threads, train_losses
from psaguard.training.world.scoring import (
    GuardedAnswer,
    answer_rows,
    calibration_notes,
    head_eval,
    monitor_eval,
    refusal_rate,
    request_examples,
    request_rows,
    vqa_rate,
)

__all__ = ["ExperimentResult", "ExperimentSpec", "run_experiment"]

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "first")
"""Stage I runs: text-aware ``mean`` pooling (the guard) and the paper's ``first`` pooling (the ablation)."""


class ExperimentResult(BaseModel):
    """Where a run wrote its outputs, and its metrics."""

    model_config = ConfigDict(extra="forbid")

    metrics: WorldMetrics = Field(description="Everything the report shows.")
    report: Path = Field(description="The markdown report.")
    base_dir: Path = Field(description="The trained tiny base VLM (model + processor).")
    guard_dir: Path = Field(description="The Stage II guard (guard + LoRA adapter).")
    base_loss: tuple[float, float] = Field(description="Base VQA fine-tuning loss, first and last 10 steps.")
    stage1_loss: tuple[float, float] = Field(
        description="Stage I head loss (CE level + CE type) of the mean-pooling run, first and last logged."
    )
    correct_ids: set[str] = Field(description="Test rows whose guarded answer equals the target response.")


def _stage_kwargs(stage: StageSettings, seed: int) -> dict[str, Any]:
    return {
        "max_steps": stage.steps,
        "batch_size": stage.batch_size,
        "grad_accum": 1,
        "lr": stage.lr,
        "warmup_steps": stage.warmup,
        "weight_decay": stage.weight_decay,
        "decay_norms_and_biases": stage.decay_norms_and_biases,
        "seed": seed,
        "checkpoint_every": stage.steps + 1,  # runs this short need no resumable checkpoints
        "log_every": max(1, stage.steps // 10),
        "progress_bar": False,
        "cpu": not torch.cuda.is_available(),
    }


def _stage1(spec: ExperimentSpec, base_dir: Path, world_dir: Path, out: Path, pooling: str) -> Path:
    cfg = Stage1Config(
        model=str(base_dir),
        train_data=world_dir / "train.jsonl",
        # The val split picks the best step by macro-F1 (the report's measure; the run is not cut short, so
        # the steps and timings stay those of the preset) and fits the heads' temperatures (calibration).
        eval_data=world_dir / "val.jsonl",
        eval_every=max(1, spec.stage1.steps // 30),
        early_stopping={"metric": "macro_f1", "patience": None},
        output_dir=out,
        num_safe=None,  # the world is balanced by construction; the paper's 3000 would be all of it anyway
        lm_loss_weight=spec.stage1_lm_weight,
        train_with_hints=spec.train_with_hints,
        guard={
            "tokens": {"num_tokens": spec.num_tokens, "init_std": spec.token_init_std},
            # the world's harmful answers label every answer: the guard gets a response head to learn them
            "head": {"pooling": pooling, "response_head": spec.world.harmful_answers > 0},
        },
        **_stage_kwargs(spec.stage1, spec.seed),
    )
    return train_stage1(cfg)


def _stage2(spec: ExperimentSpec, base_dir: Path, world_dir: Path, stage1_dir: Path, out: Path) -> Path:
    cfg = Stage2Config(
        model=str(base_dir),
        guard=stage1_dir,
        train_data=world_dir / "train.jsonl",
        output_dir=out,
        lora=LoraSettings(r=spec.lora_r, alpha=2 * spec.lora_r, dropout=0.0),
        quant=QuantConfig(load_in_4bit=spec.qlora, compute_dtype="float32" if spec.qlora else "bfloat16"),
        gradient_checkpointing=spec.qlora,
        plots=False,
        train_with_hints=spec.train_with_hints,
        **_stage_kwargs(spec.stage2, spec.seed),
    )
    return train_stage2(cfg)


def capability_rows(rows: list[WorldRow]) -> list[WorldRow]:
    """The rows a base VLM learns from: safe rows, plus risk-concept images with their plain answer.

    A real base VLM can name a gun or read a word whatever its safety training; teaching the tiny one to
    answer plainly about risk-concept images too gives its vision tower features that tell concepts apart,
    which the frozen-tower Stage I needs. Relabelled rows are level 0 only for this SFT; the guard's data and
    every evaluation keep the true labels.
    """
    safe_type = DEFAULT_TAXONOMY.safe_type_id
    plain = [
        r.model_copy(update={"response": r.meta.answer, "safe_level": 0, "safe_type": safe_type})
        for r in rows
        if r.meta.kind == "image_risk" and r.meta.answer
    ]
    return [r for r in rows if r.safe_level == 0] + plain


def _joint_ids(rows: list[WorldRow]) -> set[str]:
    return {r.id for r in rows if r.meta.kind == "joint" or r.meta.twin_of is not None}


@dataclass(frozen=True)
class _World:
    """A built world: its directory, the rows of the splits the experiment reads and the test split as the
    trainer's examples."""

    directory: Path
    train: list[WorldRow]
    test: list[WorldRow]
    attack: list[WorldRow]
    test_examples: list[Example]


@dataclass(frozen=True)
class _Base:
    """The trained tiny base VLM: where it is saved and what its training measured."""

    directory: Path
    probe: float
    sft: SftResult
    vqa: float


@dataclass(frozen=True)
class _Generation:
    """Guarded answers to the test and attack rows and what they score."""

    answers: list[GuardedAnswer]
    scores: GenerationEval
    attacks: dict[str, float]
    vqa: float
    correct: set[str]


def run_experiment(spec: ExperimentSpec, out_dir: str | Path) -> ExperimentResult:
    """Run the whole experiment into ``out_dir`` (world/, base/, stage1-*/, stage2/, report/).

    torch's CPU thread count is ``spec.threads`` during the run and what it was afterwards; every random
    draw comes from generators seeded by the spec, so the run leaves the global random state alone.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clock = StepClock("world run")
    with torch_threads(spec.threads):
        world = _build(spec, out)
        clock.lap("world")
        base = _teach_base(spec, world, out / "base")
        clock.lap("base model")
        stage1_dirs = {p: _stage1(spec, base.directory, world.directory, out / f"stage1-{p}", p) for p in POOLINGS}
        clock.lap("stage I (mean + first)")
        guard_dir = _stage2(spec, base.directory, world.directory, stage1_dirs["mean"], out / "stage2")
        clock.lap("stage II")
        heads, report, guard = _evaluate_heads(base.directory, stage1_dirs["first"], guard_dir, world)
        clock.lap("head evaluation")
        generation = _generate(guard, world, spec.max_new_tokens)
        clock.lap("guarded generation")
        responses, monitor = _judge_answers(guard, world)
        if responses is not None:
            clock.lap("answers judged")
    stage1_loss = train_losses(stage1_dirs["mean"])
    metrics = WorldMetrics(
        heads=heads,
        primary="mean",
        baseline="first",
        generation=generation.scores,
        vqa={"base": base.vqa, "guarded": generation.vqa},
        vqa_reference="base",
        vqa_final="guarded",
        attacks=generation.attacks,
        threshold_sweep=report.threshold_sweep,
        responses=responses,
        monitor=monitor,
        notes=_notes(spec, world, base, stage1_loss, report, clock.timings),
    )
    return ExperimentResult(
        metrics=metrics,
        report=_write(metrics, generation.answers, out / "report", spec.preset),
        base_dir=base.directory,
        guard_dir=guard_dir,
        base_loss=(base.sft.first_loss, base.sft.last_loss),
        stage1_loss=stage1_loss,
        correct_ids=generation.correct,
    )


def _build(spec: ExperimentSpec, out: Path) -> _World:
    """Step 1: build the world and read the splits the experiment uses."""
    directory = out / "world"
    build_world(directory, spec.built_world)
    splits = (read_rows(directory, s) for s in ("train", "test", "attack"))
    return _World(directory, *splits, read_jsonl(directory / "test.jsonl")[0])


def _teach_base(spec: ExperimentSpec, world: _World, directory: Path) -> _Base:
    """Step 2: a tiny base VLM with the world's vocabulary, taught its safe VQA, saved to ``directory``."""
    model, processor = build_base_vlm(spec.base)
    probe = pretrain_vision(model, processor, spec.world, spec.base)
    sft = train_safe_vqa(model, processor, capability_rows(world.train), world.directory, spec.base)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    vqa = vqa_accuracy(model, processor, world.test, world.directory, max_new_tokens=spec.max_new_tokens)
    return _Base(directory, probe, sft, vqa)


def _evaluate_heads(
    base_dir: Path, first_dir: Path, guard_dir: Path, world: _World
) -> tuple[dict[str, HeadEval], EvalReport, SafetyGuard]:
    """Step 4: the confusion matrices of both poolings on the test split, the guard's eval report (its
    threshold sweep and calibration are the report's), and the guard (loaded after the ablation's is freed)."""
    examples = request_examples(world.test_examples)
    joint = _joint_ids(world.test)
    first_guard = load_trained_guard(base_dir, first_dir, adapter=False)
    first = head_eval(first_guard, examples, joint)
    del first_guard  # one trained guard in memory at a time
    guard = load_trained_guard(base_dir, guard_dir, adapter=True)
    report = evaluate_guard(guard, examples)
    return {"mean": head_eval(guard, examples, joint, report), "first": first}, report, guard


def _generate(guard: SafetyGuard, world: _World, max_new_tokens: int) -> _Generation:
    """Step 5: guarded answers to the test rows (refusals, over-refusals, VQA) and to the attack rows."""
    answers = answer_rows(guard, request_rows(world.test), world.directory, max_new_tokens=max_new_tokens)
    by_id = {r.id: r for r in world.test}
    unsafe = [a for a in answers if by_id[a.row_id].safe_level > 0]
    safe = [a for a in answers if by_id[a.row_id].safe_level == 0]
    scores = GenerationEval(
        refusal_unsafe=refusal_rate(unsafe),
        over_refusal_safe=refusal_rate(safe, count_hints=True),
        n_unsafe=len(unsafe),
        n_safe=len(safe),
    )
    attacks = {"none": 1 - refusal_rate(unsafe), **_attack_success(guard, world, max_new_tokens)}
    # Right answers: the target answer, or a refusal of a level-3 request (whose target is the refusal).
    correct = {a.row_id for a in answers if a.correct or (a.refused and by_id[a.row_id].safe_level == 3)}
    return _Generation(answers, scores, attacks, vqa_rate(safe), correct)


def _judge_answers(guard: SafetyGuard, world: _World) -> tuple[ResponseReport | None, MonitorEval | None]:
    """Step 6, in worlds that label answers: the response head on every test answer, the streaming monitor on
    the harmful ones; (None, None) for a guard without a response head."""
    if not guard.has_response_head:
        return None, None
    return evaluate_responses(guard, world.test_examples), monitor_eval(guard, world.test, world.directory)


def _attack_success(guard: SafetyGuard, world: _World, max_new_tokens: int) -> dict[str, float]:
    """Share of the attack rows of each attack that were not refused."""
    attacked = answer_rows(guard, world.attack, world.directory, max_new_tokens=max_new_tokens)
    kind_of = {r.id: r.meta.attack for r in world.attack}
    success = {}
    for kind in ("suffix", "typo"):
        hit = [a for a in attacked if kind_of[a.row_id] == kind]
        if hit:
            success[kind] = 1 - refusal_rate(hit)
    return success


def _notes(
    spec: ExperimentSpec,
    world: _World,
    base: _Base,
    stage1_loss: tuple[float, float],
    report: EvalReport,
    timings: dict[str, float],
) -> dict[str, str | float | int]:
    """The report's run table: sizes, settings, losses, calibration and timings."""
    sft = base.sft
    return {
        "preset": spec.preset or "custom",
        "seed": spec.seed,
        "rows train / test / attack": f"{len(world.train)} / {len(world.test)} / {len(world.attack)}",
        "image size": spec.world.image_size,
        "base vision pre-training probe accuracy": f"{base.probe:.3f}",
        "base SFT loss first -> last": f"{sft.first_loss:.3f} -> {sft.last_loss:.3f} ({sft.steps} steps)",
        "stage I head loss first -> last (mean)": f"{stage1_loss[0]:.3f} -> {stage1_loss[1]:.3f}",
        "stage I / II steps": f"{spec.stage1.steps} / {spec.stage2.steps}",
        "stage II": f"{'QLoRA (NF4)' if spec.qlora else 'LoRA (fp32)'} r={spec.lora_r}",
        "safety tokens": spec.num_tokens,
        **calibration_notes(report, report.threshold_sweep),
        **{f"time {k} (s)": v for k, v in timings.items()},
        "time total (s)": round(sum(timings.values()), 1),
    }


def _write(metrics: WorldMetrics, answers: list[GuardedAnswer], report_dir: Path, preset: str | None) -> Path:
    """Step 7: the markdown report with its plots, ``metrics.json`` and ``answers.jsonl``; the report's path."""
    report = write_report(metrics, report_dir, title=f"Synthetic world report ({preset or 'custom'} preset)")
    (report_dir / "metrics.json").write_text(metrics.model_dump_json(indent=2) + "\n")
    (report_dir / "answers.jsonl").write_text("".join(a.model_dump_json() + "\n" for a in answers))
    return report
