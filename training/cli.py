"""``psaguard train``, ``psaguard eval`` and ``psaguard calibrate``: subcommands registered into the main CLI.

psaguard train stage1 --config train.yaml [--resume] [--set lr=1e-4 --set quant.load_in_4bit=true]
psaguard eval --guard out/stage1 --data test.jsonl [--model llava-dir] [--out out/eval]
psaguard calibrate --guard out/stage1 --data val.jsonl [--model llava-dir]
psaguard bench --guard out/stage1 --suite world,vlguard,figstep [--data-dir data] [--model llava-dir]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from psaguard.cli.extras import require_extra
from psaguard.cli.logs import add_log_level_option
from psaguard.dtypes import add_dtype_option
from psaguard.errors import PsaGuardError

__all__ = ["register", "run_bench", "run_calibrate", "run_eval", "run_train"]

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``eval`` subcommands; each sets ``func(args) -> exit code``."""
    train = subparsers.add_parser(
        "train", help="train a guard (stage1: safety modules; stage2: LoRA)", description=run_train.__doc__
    )
    train.add_argument("stage", choices=("stage1", "stage2"), help="which stage to run")
    train.add_argument("--config", type=Path, help="YAML or JSON stage config")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted for nested keys), e.g. --set lr=1e-4; repeatable",
    )
    add_log_level_option(train)
    train.set_defaults(func=run_train)

    evaluate = subparsers.add_parser(
        "eval", help="evaluate a guard's safety head on labelled JSONL data", description=run_eval.__doc__
    )
    _add_guard_data_args(evaluate)
    evaluate.add_argument("--out", type=Path, help="report directory (default: <guard>/eval)")
    evaluate.add_argument("--no-plots", action="store_true", help="write the JSON report only")
    add_log_level_option(evaluate)
    evaluate.set_defaults(func=run_eval)

    calibrate = subparsers.add_parser(
        "calibrate",
        help="fit a guard's head temperatures on labelled JSONL data (updates its config)",
        description=run_calibrate.__doc__,
    )
    _add_guard_data_args(calibrate)
    add_log_level_option(calibrate)
    calibrate.set_defaults(func=run_calibrate)

    bench = subparsers.add_parser(
        "bench", help="score a guard benchmark by benchmark (markdown + JSON report)", description=run_bench.__doc__
    )
    bench.add_argument("--guard", type=Path, required=True, help="guard directory")
    bench.add_argument(
        "--suite",
        required=True,
        help="comma-separated suites: 'world' (synthetic test split), NAME (DATA_DIR/NAME.jsonl) or NAME=PATH.jsonl",
    )
    bench.add_argument("--data-dir", type=Path, default=Path("data"), help="where NAME.jsonl files are (default: data)")
    bench.add_argument("--model", help="base model; default: the one recorded in the guard's training config")
    bench.add_argument("--image-root", type=Path, help="directory image paths are relative to (default: each file's)")
    bench.add_argument("--out", type=Path, help="report directory (default: <guard>/bench)")
    bench.add_argument(
        "--peers", type=Path, help="JSON list of cited peer numbers to show beside ours, added to the shipped ones"
    )
    bench.add_argument(
        "--no-published-peers",
        action="store_true",
        help="leave out the peers' published numbers psaguard ships (show only those of --peers)",
    )
    bench.add_argument("--world-rows", type=int, default=64, help="rows of the 'world' suite (default 64)")
    bench.add_argument(
        "--generate", action="store_true", help="also answer every row with the guarded model and judge refusals"
    )
    bench.add_argument("--max-new-tokens", type=int, default=64, help="answer length cap with --generate")
    bench.add_argument("--batch-size", type=int, default=16, help="requests per forward pass")
    bench.add_argument("--no-plots", action="store_true", help="write the JSON and markdown only")
    bench.add_argument("--load-in-4bit", action="store_true", help="load the language model in 4-bit NF4")
    bench.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    add_dtype_option(bench)  # as eval: 'auto' loads the model as training does
    add_log_level_option(bench)
    bench.set_defaults(func=run_bench)


def run_train(args: argparse.Namespace) -> int:
    """Train a guard with a stage config (YAML/JSON) and overrides."""
    require_extra("train")
    from psaguard.training.config import Stage1Config, Stage2Config, load_config

    try:
        if args.stage == "stage1":
            from psaguard.training.stage1 import train_stage1

            out = train_stage1(load_config(Stage1Config, args.config, args.overrides), resume=args.resume)
        else:
            from psaguard.training.stage2 import train_stage2

            out = train_stage2(load_config(Stage2Config, args.config, args.overrides), resume=args.resume)
    except PsaGuardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"saved {args.stage} result to {out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate a guard's safety head: per-class precision/recall/F1/FPR, confusion matrices, calibration
    (ECE and reliability diagrams of the raw and the temperature-scaled probabilities) and the policy-threshold
    sweep (share of risky and of safe rows acted on at each threshold)."""
    require_extra("train")
    from psaguard.training.evaluate import evaluate_guard, write_report
    from psaguard.training.sweep import threshold_for_recall

    try:
        guard, examples, dataset = _guard_and_data(args)
        report = evaluate_guard(guard, examples, batch_size=args.batch_size, dataset=dataset)
        out = args.out or args.guard / "eval"
        write_report(report, out, plots=not args.no_plots)
    except PsaGuardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    point = threshold_for_recall(report.threshold_sweep, 0.9)
    sweep = {f"{p.threshold:g}": [round(p.flagged_unsafe, 4), round(p.flagged_safe, 4)] for p in report.threshold_sweep}
    summary = {
        **report.headline(),
        "threshold_sweep (t: flagged risky, flagged safe)": sweep,
        "highest threshold flagging >= 90% of risky": None if point is None else point.threshold,
        **(
            {"custom categories: share of each type's rows they fire on": report.custom_fire_rates}
            if report.custom_fire_rates
            else {}
        ),
        "report": str(out / "eval.json"),
    }
    print(json.dumps(summary, indent=2))
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    """Fit the level and type heads' softmax temperatures of a saved guard on labelled data (temperature
    scaling, by negative log-likelihood) and save the guard again with them (config and weights; a Stage II
    adapter/ beside them is left as it is)."""
    require_extra("train")
    from psaguard.training.calibration import calibrated_guard

    try:
        guard, examples, _ = _guard_and_data(args)
        calibrated, result = calibrated_guard(guard, examples, batch_size=args.batch_size)
        calibrated.save_pretrained(args.guard)  # the config and the weights that record its digest
    except PsaGuardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({**result.model_dump(), "guard": str(args.guard)}, indent=2))
    return 0


def run_bench(args: argparse.Namespace) -> int:
    """Score a guard on one or more benchmarks: per suite the detection metrics (precision/recall/F1 on risky
    rows, FPR on safe ones), macro-F1 and ECE of both heads, flag rates per source label, and the plots of
    `psaguard eval`; with --generate, the guarded model's answers: refusal and attack success rates on risky
    rows, over-refusal on safe ones. A markdown and JSON report puts cited peer numbers beside ours."""
    require_extra("train")
    from psaguard.guard import SafetyGuard
    from psaguard.training.bench import resolve_suites
    from psaguard.training.bench import run_bench as bench
    from psaguard.training.peers import load_peers

    try:
        out = args.out or args.guard / "bench"
        suites = resolve_suites(args.suite, args.data_dir, out, args.image_root, args.world_rows)
        peers = load_peers(args.peers, published=not args.no_published_peers)
        model_id = args.model or _recorded_model(args.guard)
        model, processor = _load(model_id, args.load_in_4bit, args.cpu, args.dtype)
        guard = SafetyGuard.from_pretrained(args.guard, model, processor, load_adapter=False, dtype=args.dtype)
        report = bench(
            guard,
            suites,
            out,
            guard_dir=str(args.guard),
            model=model_id,
            batch_size=args.batch_size,
            plots=not args.no_plots,
            peers=peers,
            generate=args.generate,
            max_new_tokens=args.max_new_tokens,
        )
    except PsaGuardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    summary = {
        s.suite: {"examples": s.examples, **s.detection.model_dump(include={"f1", "recall", "fpr"})}
        for s in report.suites
    }
    print(json.dumps({**summary, "report": str(out / "bench.md")}, indent=2))
    return 0


def _guard_and_data(args: argparse.Namespace):
    """The guard of ``--guard`` on its base model, and the examples of ``--data``."""
    from psaguard.guard import SafetyGuard
    from psaguard.training.data import read_jsonl

    model_id = args.model or _recorded_model(args.guard)
    model, processor = _load(model_id, args.load_in_4bit, args.cpu, args.dtype)
    guard = SafetyGuard.from_pretrained(args.guard, model, processor, load_adapter=False, dtype=args.dtype)
    examples, dataset = read_jsonl(
        args.data, image_root=args.image_root, taxonomy=guard.classifier.config.taxonomy, skip_invalid=args.skip_invalid
    )
    return guard, examples, dataset


def _add_guard_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--guard", type=Path, required=True, help="guard directory")
    parser.add_argument("--data", type=Path, required=True, help="labelled JSONL data")
    parser.add_argument("--model", help="base model; default: the one recorded in the guard's training config")
    parser.add_argument("--image-root", type=Path, help="directory image paths are relative to")
    parser.add_argument("--batch-size", type=int, default=16, help="requests per forward pass")
    parser.add_argument("--skip-invalid", action="store_true", help="skip and count invalid rows")
    parser.add_argument("--load-in-4bit", action="store_true", help="load the language model in 4-bit NF4")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    add_dtype_option(parser)  # 'auto' loads the model as training does: bfloat16 on CUDA, float32 on the CPU


def _recorded_model(guard_dir: Path) -> str:
    from psaguard.errors import ConfigError
    from psaguard.training.config import CONFIG_FILE_NAME

    path = guard_dir / CONFIG_FILE_NAME
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["model"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"pass --model: no base model recorded in {path} ({err})") from err


def _load(model_id: str, load_in_4bit: bool, cpu: bool, dtype: str):
    import torch

    from psaguard.training.config import QuantConfig
    from psaguard.training.runtime import load_model_from

    device = torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")
    return load_model_from(model_id, None, QuantConfig(load_in_4bit=load_in_4bit), dtype, device)
