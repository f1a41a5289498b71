"""`psaguard world ...`: build the synthetic safety world, draw its sample sheet, run the experiment."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from psaguard.cli.extras import require_extra
from psaguard.cli.logs import add_log_level_option

__all__ = ["SIZES", "register"]

SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (120, 40, 80, 40),
    "small": (1200, 200, 400, 200),
    "medium": (6000, 600, 1500, 600),
    "large": (24000, 2000, 4000, 2000),
}
"""Preset row counts (train, val, test, attack) for ``--size``."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``world`` command (``build``, ``base``, ``samples``, ``run``, ``demo-guard``) to a CLI's subparsers."""
    world = subparsers.add_parser("world", help="Synthetic safety world: build data, draw samples, run the experiment.")
    commands = world.add_subparsers(dest="world_command", required=True)

    build = commands.add_parser("build", help="Write images and train/val/test/attack JSONL.")
    build.add_argument("--out", required=True, type=Path, help="Output directory.")
    build.add_argument("--seed", type=int, default=0, help="Master seed (default 0).")
    build.add_argument("--size", choices=sorted(SIZES), default="small", help="Row-count preset (default small).")
    build.add_argument("--image-size", type=int, default=64, help="PNG side in pixels (default 64).")
    build.add_argument("--n-train", type=int, help="Override the preset's train rows.")
    build.add_argument("--n-val", type=int, help="Override the preset's validation rows.")
    build.add_argument("--n-test", type=int, help="Override the preset's test rows.")
    build.add_argument("--n-attack", type=int, help="Override the preset's attack rows.")
    build.set_defaults(func=_build)

    base = commands.add_parser("base", help="Teach a tiny base VLM the safe VQA of a built world; save it.")
    base.add_argument("--world", required=True, type=Path, help="A directory written by 'world build'.")
    base.add_argument("--out", required=True, type=Path, help="Where to save the model and processor.")
    base.add_argument("--steps", type=int, default=None, help="VQA fine-tuning steps (default: the config's).")
    base.add_argument("--vision-steps", type=int, default=None, help="Vision pre-training steps (default: config's).")
    base.add_argument("--eval-rows", type=int, default=None, help="Most safe rows evaluated per set (default 400).")
    base.add_argument(
        "--vision-styles",
        choices=("train", "all"),
        default=None,
        help="Styles of the vision pre-training corpus (default train: the world's training styles).",
    )
    base.add_argument(
        "--language",
        choices=("none", "paraphrases"),
        default=None,
        help="Text read beside the VQA rows (default none; paraphrases: every template rewritten as another).",
    )
    base.add_argument(
        "--tie-embeddings",
        action="store_true",
        default=None,
        help="Tie the language model's input and output embeddings (default: untied).",
    )
    base.add_argument("--seed", type=int, default=0, help="Seed (default 0).")
    add_log_level_option(base)
    base.set_defaults(func=_base)

    samples = commands.add_parser("samples", help="Draw a sheet of every concept in every style.")
    samples.add_argument("--out", required=True, type=Path, help="PNG file to write.")
    samples.add_argument("--image-size", type=int, default=32, help="Rendered side in pixels (default 32).")
    samples.add_argument("--seed", type=int, default=0, help="Seed (default 0).")
    samples.set_defaults(func=_samples)

    run = commands.add_parser("run", help="Build a world, train a base VLM and a guard on it, write the report.")
    run.add_argument("--out", required=True, type=Path, help="Output directory (world, models, report/).")
    run.add_argument(
        "--preset", choices=("ci", "cpu", "cpu-long", "gpu"), default="cpu", help="Size preset (default cpu)."
    )
    run.add_argument("--seed", type=int, default=0, help="Seed of the world and of every run (default 0).")
    run.add_argument("--report-dir", type=Path, help="Also write the report (markdown + PNGs) here.")
    run.add_argument("--export-demo", type=Path, help="Also export the trained model and guard as demo assets here.")
    add_log_level_option(run)
    run.set_defaults(func=_run)

    demo = commands.add_parser(
        "demo-guard", help="Retrain the shipped demo guard with a response head on fresh world rows (docs/world.md)."
    )
    demo.add_argument("--out", required=True, type=Path, help="Output directory (world, guards, demo_guard.json).")
    demo.add_argument(
        "--steps", type=int, default=1500, help="Stage I steps; one fresh row per example (default 1500)."
    )
    demo.add_argument("--seed", type=int, default=0, help="Seed of the world, the run and the examples (default 0).")
    demo.add_argument("--export", type=Path, help="Write the new guard, headline.json and examples here.")
    add_log_level_option(demo)
    demo.set_defaults(func=_demo_guard)


def _build(args: argparse.Namespace) -> int:
    from psaguard.training.world.build import WorldSpec, build_world

    n_train, n_val, n_test, n_attack = SIZES[args.size]
    spec = WorldSpec(
        seed=args.seed,
        image_size=args.image_size,
        n_train=n_train if args.n_train is None else args.n_train,
        n_val=n_val if args.n_val is None else args.n_val,
        n_test=n_test if args.n_test is None else args.n_test,
        n_attack=n_attack if args.n_attack is None else args.n_attack,
    )
    summary = build_world(args.out, spec)
    print(json.dumps({"out": str(args.out), "rows": summary.rows, "images": summary.images}, indent=2))
    return 0


def _base(args: argparse.Namespace) -> int:
    require_extra("train")
    from psaguard.training.world.base_model import BaseVlmConfig, teach_base_vlm

    overrides = {
        k: v
        for k, v in (
            ("steps", args.steps),
            ("vision_steps", args.vision_steps),
            ("eval_rows", args.eval_rows),
            ("vision_styles", args.vision_styles),
            ("language", args.language),
            ("tie_embeddings", args.tie_embeddings),
        )
        if v is not None
    }
    model, processor, result = teach_base_vlm(args.world, BaseVlmConfig(seed=args.seed, **overrides))
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    (args.out / "base_vlm.json").write_text(result.model_dump_json(indent=2))
    print(result.model_dump_json(indent=2))
    return 0


def _samples(args: argparse.Namespace) -> int:
    from psaguard.training.world.sheet import sample_sheet

    args.out.parent.mkdir(parents=True, exist_ok=True)
    sample_sheet(args.image_size, seed=args.seed).save(args.out)
    print(args.out)
    return 0


def _run(args: argparse.Namespace) -> int:
    require_extra("train")
    from psaguard.training.world.experiment import ExperimentSpec, run_experiment
    from psaguard.training.world.report import write_report

    spec = ExperimentSpec.from_preset(args.preset, seed=args.seed)
    result = run_experiment(spec, args.out)
    if args.report_dir is not None:
        write_report(result.metrics, args.report_dir, title=f"Synthetic world report ({args.preset} preset)")
    if args.export_demo is not None:
        from psaguard.training.world.demo_assets import export_demo_assets

        export_demo_assets(
            result.base_dir,
            result.guard_dir,
            args.out / "world",
            args.export_demo,
            headline=result.metrics.headline(),
            seed=args.seed,
        )
    print(result.report.read_text())
    return 0


def _demo_guard(args: argparse.Namespace) -> int:
    require_extra("train")
    from psaguard.cli.demo import demo_guard_dir, demo_model_dir
    from psaguard.training.world.demo_guard import DemoGuardSpec, retrain_demo_guard

    spec = DemoGuardSpec(seed=args.seed, steps=args.steps)
    result = retrain_demo_guard(spec, args.out, demo_model_dir(), demo_guard_dir(), export=args.export)
    print(result.model_dump_json(indent=2))
    return 0
