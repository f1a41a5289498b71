"""The GPU evidence in one run: ``pytest -m gpu``, then classify, generate and training at LLaVA-1.5-7B shapes.

    OUT=/tmp/out bash benchmarks/gpu_suite.sh            # on a GPU machine (installs carried wheels first)
    python benchmarks/gpu_suite.py --tiny --out /tmp/out # the same run at tiny shapes on the CPU (the test)

Writes under ``--out``: ``pytest_gpu.txt``, ``tables.md`` (every table, also printed) and ``raw.json`` (every
measured number). Random bf16 weights (``benchmarks/random_checkpoint.py``), written once as a sharded
checkpoint so the trainer's own loading path (NF4 via bitsandbytes) is what is timed. Each section runs in
its own process with a time limit; the whole run keeps to ``--budget-s`` (default 450 s, so that one rerun
fits a 15-minute lease): a section that would start too late is skipped and says so.

Sections (the goals are issue #18's):

- ``bf16``: ``classify`` p50/p95 at batch 1 and throughput at batch 1, 8, 32, 64, end to end (CPU
  preprocessing included) and from pixels (vision tower + safety projector + head), against the FLOP limit
  at this GPU's measured bf16 matmul rate, and against a separate guard model of the same 7B shape
  (prefill of image + prompt, 20 greedy tokens) at batch 1 and 8; guarded vs plain ``generate`` of 128 tokens
  at batch 1 and 8;
- ``nf4``: the same guarded vs plain ``generate`` with the language model in NF4;
- ``stage1``, ``stage2_r256``, ``stage2_r16``: optimizer steps of the trainer with the LLM in NF4 and
  gradient checkpointing on; peak GPU memory and samples/s from the trainer's own metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from machine import describe_machine
from measure import Runs, matmul_tflops, round_robin
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoProcessor, LlavaForConditionalGeneration
from workload import (
    ALLOW_ALL,
    GUARD_DIR,
    GUARD_PROMPT,
    PROMPT,
    images,
    plain_generate,
    random_checkpoint_bytes,
    write_train_data,
    write_workload,
)

from psaguard import SafetyGuard
from psaguard.training.config import QuantConfig, Stage1Config, Stage2Config
from psaguard.training.runtime import load_model_from
from psaguard.training.stage1 import train_stage1
from psaguard.training.stage2 import train_stage2

HERE = Path(__file__).resolve().parent
GiB = 2**30


class Sizes:
    """Batch sizes, token counts and repeats of a run (the issue's at 7B shapes; small ones with --tiny)."""

    def __init__(self, tiny: bool) -> None:
        self.classify_batches = (1, 2, 4) if tiny else (1, 8, 32, 64)
        self.latency_runs = 3 if tiny else 30
        self.throughput_runs = 2 if tiny else 5
        self.guard_batches = (1, 2) if tiny else (1, 8)
        self.guard_tokens = 2 if tiny else 20
        self.generate_batches = (1, 2) if tiny else (1, 8)
        self.new_tokens = 4 if tiny else 128
        self.generate_runs = 1 if tiny else 3
        self.train_steps = 3 if tiny else 6
        self.train_batch = 2
        self.train_rows = 8 if tiny else 32


# ---------------------------------------------------------------------------------------------- sections
def section_bf16(args: argparse.Namespace, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """classify latency/throughput/FLOP rate, the separate guard model, guarded vs plain generate (bf16)."""
    directory = Path(args.checkpoint)
    model = LlavaForConditionalGeneration.from_pretrained(
        directory, dtype=torch.bfloat16, device_map={"": str(device)}
    ).eval()
    proc = AutoProcessor.from_pretrained(directory)
    guard = SafetyGuard.from_pretrained(directory / GUARD_DIR, model, proc, policy=ALLOW_ALL)
    return {
        **_classify(guard, sizes, device),
        "separate_guard_s": _separate_guard(model, proc, sizes, device),
        "generate_s": _generate(model, proc, guard, sizes, device),
        "peak_gpu_gib": _peak_gpu(device),
    }


def section_nf4(args: argparse.Namespace, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Guarded vs plain generate with the language model in NF4, loaded as the trainer loads it."""
    directory = Path(args.checkpoint)
    model, proc = load_model_from(str(directory), None, QuantConfig(load_in_4bit=True), "bfloat16", device)
    guard = SafetyGuard.from_pretrained(directory / GUARD_DIR, model, proc, policy=ALLOW_ALL)
    return {"generate_s": _generate(model, proc, guard, sizes, device), "peak_gpu_gib": _peak_gpu(device)}


def _classify(guard: SafetyGuard, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    pool = images(max(sizes.classify_batches))
    backbone = guard.backbone
    latency = round_robin({"b1": lambda: guard.classify(pool[0], PROMPT)}, sizes.latency_runs, device)["b1"]
    end_to_end, from_pixels, preprocess = {}, {}, {}
    for batch in sizes.classify_batches:
        requests, prompts = pool[:batch], [PROMPT] * batch
        pixels = backbone.preprocess(guard.processor, requests)

        def modules_only(pixels: dict[str, torch.Tensor] = pixels, prompts: list[str] = prompts) -> object:
            with torch.inference_mode():
                return guard.head_logits(backbone.encode_images(**pixels), prompts)

        runs = round_robin(
            {
                "end_to_end": lambda r=requests, p=prompts: guard.classify_batch(r, p),
                "from_pixels": modules_only,
                "preprocess": lambda r=requests: backbone.preprocess(guard.processor, r),
            },
            sizes.throughput_runs,
            device,
        )
        end_to_end[batch], from_pixels[batch] = list(runs["end_to_end"].values), list(runs["from_pixels"].values)
        preprocess[batch] = list(runs["preprocess"].values)
    pixels = backbone.preprocess(guard.processor, pool[:1])
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        guard.head_logits(backbone.encode_images(**pixels), [PROMPT])
    return {
        "classify_b1_s": list(latency.values),
        "classify_batch_s": end_to_end,
        "classify_from_pixels_s": from_pixels,
        "preprocess_s": preprocess,
        "classify_flops_per_image": counter.get_total_flops(),
        "matmul_tflops": list(
            matmul_tflops(torch.bfloat16, device, size=8192 if device.type == "cuda" else 1024).values
        ),
    }


def _separate_guard(model: Any, proc: Any, sizes: Sizes, device: torch.device) -> dict[int, list[float]]:
    pool = images(max(sizes.guard_batches))
    variants = {
        str(b): plain_generate(model, proc, GUARD_PROMPT, pool[:b], sizes.guard_tokens, device)
        for b in sizes.guard_batches
    }
    runs = round_robin(variants, sizes.generate_runs, device)
    return {int(b): list(r.values) for b, r in runs.items()}


def _generate(model: Any, proc: Any, guard: SafetyGuard, sizes: Sizes, device: torch.device) -> dict[str, list[float]]:
    n = sizes.new_tokens
    variants: dict[str, Callable[[], object]] = {}
    for batch in sizes.generate_batches:
        pool = images(batch)
        variants[f"plain_b{batch}"] = plain_generate(model, proc, PROMPT, pool, n, device)
        variants[f"guarded_b{batch}"] = lambda pool=pool, b=batch: guard.generate_batch(
            pool, [PROMPT] * b, max_new_tokens=n, min_new_tokens=n, do_sample=False
        )
    return {name: list(r.values) for name, r in round_robin(variants, sizes.generate_runs, device).items()}


def _peak_gpu(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GiB if device.type == "cuda" else None


def section_train(args: argparse.Namespace, sizes: Sizes, device: torch.device, stage: str, rank: int | None) -> dict:
    """A few trainer steps, LLM in NF4, gradient checkpointing on; the trainer's samples/s and peak memory."""
    directory = Path(args.checkpoint)
    out = Path(tempfile.mkdtemp(prefix=f"psaguard-{stage}-", dir=args.scratch))
    common = {
        "model": str(directory),
        "train_data": str(directory / "train.jsonl"),
        "output_dir": str(out),
        "model_dtype": "bfloat16",
        "quant": {"load_in_4bit": True},
        "mixed_precision": "bf16",
        "gradient_checkpointing": True,
        "cpu": device.type != "cuda",
        "batch_size": sizes.train_batch,
        "grad_accum": 1,
        "max_steps": sizes.train_steps,
        "warmup_steps": 1,
        "log_every": 1,
        "checkpoint_every": 10_000,
        "progress_bar": False,
        "plots": False,
        "num_safe": None,
    }
    start = time.perf_counter()
    if stage == "stage1":
        train_stage1(Stage1Config(**common))
    else:
        train_stage2(Stage2Config(**common, guard=str(directory / GUARD_DIR), lora={"r": rank}))
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "samples_per_s" in r]
    return {
        "samples_per_s": [r["samples_per_s"] for r in steps],
        "gpu_mem_gib": [r["gpu_mem_gib"] for r in steps if "gpu_mem_gib" in r],
        "wall_s": seconds,
        "lora_r": rank,
    }


SECTIONS: dict[str, Callable[[argparse.Namespace, Sizes, torch.device], dict[str, Any]]] = {
    "bf16": section_bf16,
    "nf4": section_nf4,
    "stage1": lambda a, s, d: section_train(a, s, d, "stage1", None),
    "stage2_r256": lambda a, s, d: section_train(a, s, d, "stage2", 256),
    "stage2_r16": lambda a, s, d: section_train(a, s, d, "stage2", 16),
}


# ---------------------------------------------------------------------------------------------- driver
def run_pytest(out: Path, timeout: float) -> dict[str, Any]:
    """``pytest -m gpu`` over the whole suite (tests without a GPU skip), its output in ``pytest_gpu.txt``.

    A test file whose optional dependency is missing there (langchain, the serving extras) fails to
    collect and is reported, but does not stop the other GPU tests.
    """
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rA"]
    command += ["--continue-on-collection-errors", "tests"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    try:
        result = subprocess.run(
            command, cwd=HERE.parent, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as err:
        (out / "pytest_gpu.txt").write_text(str(err.stdout or ""))
        return {"returncode": None, "summary": f"timed out after {timeout:.0f} s", "wall_s": timeout}
    (out / "pytest_gpu.txt").write_text(result.stdout + result.stderr)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return {
        "returncode": result.returncode,
        "summary": lines[-1] if lines else "",
        "wall_s": time.perf_counter() - start,
    }


class Budget:
    """The seconds left of the run's budget; a section gets what is left, or is skipped below its minimum."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def _spawn(args: argparse.Namespace, role: str, budget: Budget, minimum: float) -> dict[str, Any]:
    """Run one section in a fresh process, within the budget; a failure is recorded, not raised."""
    left = budget.left()
    if left < minimum:
        return {"skipped": f"{left:.0f} s of the budget left, the section needs about {minimum:.0f} s"}
    result = Path(args.scratch) / f"{role}.json"  # $OUT takes few files: only the report's go there
    command = [sys.executable, __file__, "--worker", role, "--result", str(result), *_worker_args(args)]
    print(f"[{time.strftime('%H:%M:%S')}] {role} (at most {left:.0f} s) ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(command, timeout=left, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {left:.0f} s"}
    if done.returncode != 0:
        return {"error": f"exit status {done.returncode} (traceback in the log)"}
    return {**json.loads(result.read_text()), "section_wall_s": time.perf_counter() - start}


def _worker_args(args: argparse.Namespace) -> list[str]:
    flags = ["--checkpoint", str(args.checkpoint), "--scratch", str(args.scratch), "--device", args.device]
    return flags + (["--tiny"] if args.tiny else [])


# Seconds a section needs at least at 7B shapes on an H200 (load + steps); below that it is not started.
MINIMUM_S = {"build": 60, "bf16": 60, "nf4": 50, "stage1": 45, "stage2_r256": 45, "stage2_r16": 45}


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """pytest, the checkpoint, then every section in its own process, within ``--budget-s``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget_s)
    scale = 0.0 if args.tiny else 1.0
    results: dict[str, Any] = {"machine": describe_machine(), "tiny": args.tiny, "device": args.device}
    if "pytest" not in args.skip:
        results["pytest"] = run_pytest(out, min(args.pytest_timeout_s, budget.left()))
    with tempfile.TemporaryDirectory(prefix="psaguard-gpu-suite-", dir=args.scratch) as scratch:
        args.checkpoint = Path(scratch) / "checkpoint"
        args.scratch = scratch
        free = os.statvfs(scratch).f_bavail * os.statvfs(scratch).f_frsize
        if free < random_checkpoint_bytes(args.tiny) * 1.1:
            raise SystemExit(f"{scratch} has {free / GiB:.1f} GiB free, too little for the checkpoint")
        results["build"] = _spawn(args, "build", budget, MINIMUM_S["build"] * scale)
        for name in SECTIONS:
            if name not in args.skip and "error" not in results["build"]:
                results[name] = _spawn(args, name, budget, MINIMUM_S[name] * scale)
    results["wall_s"] = args.budget_s - budget.left()
    return results


def build(args: argparse.Namespace, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Write the random checkpoint, the guard and the training rows."""
    start = time.perf_counter()
    directory = write_workload(Path(args.checkpoint), args.tiny)
    write_train_data(directory, sizes.train_rows)
    return {"write_s": time.perf_counter() - start}


# ---------------------------------------------------------------------------------------------- report
def _goal(met: bool) -> str:
    return "met" if met else "missed"


def _median(values: list[float]) -> float:
    return Runs(values=tuple(values)).median


def _classify_tables(bf16: dict[str, Any]) -> list[str]:
    latency = Runs(values=tuple(bf16["classify_b1_s"]))
    peak = _median(bf16["matmul_tflops"]) * 1e12
    flops = bf16["classify_flops_per_image"]
    guard_b1 = bf16["separate_guard_s"]
    guard_rate = max(int(b) / _median(v) for b, v in guard_b1.items())
    p50 = latency.median * 1000
    lines = [
        f"classify at batch 1: p50 {p50:.1f} ms, p95 {latency.quantile(0.95) * 1000:.1f} ms "
        f"({len(latency.values)} runs; goal p50 <= 15 ms: {_goal(p50 <= 15)})",
        f"FLOPs per image (vision tower + safety projector + head): {flops / 1e9:.1f} G; bf16 matmul here "
        f"{peak / 1e12:.0f} TFLOP/s",
        "",
        "| batch | end to end, images/s | from pixels, images/s | from pixels, % of FLOP limit "
        "| CPU preprocessing, images/s |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    best = best_pixels = 0.0
    for batch, runs in bf16["classify_batch_s"].items():
        e2e = int(batch) / _median(runs)
        pix = int(batch) / _median(bf16["classify_from_pixels_s"][batch])
        pre = int(batch) / _median(bf16["preprocess_s"][batch])
        best, best_pixels = max(best, e2e), max(best_pixels, pix)
        lines.append(f"| {batch} | {e2e:.1f} | {pix:.1f} | {100 * pix * flops / peak:.1f} | {pre:.1f} |")
    largest = max(bf16["classify_from_pixels_s"], key=int)
    share = int(largest) / _median(bf16["classify_from_pixels_s"][largest]) * flops / peak
    lines += [
        "",
        f"FLOP limit at batch {largest}: {100 * share:.1f} % (goal >= 40 %: {_goal(share >= 0.4)})",
        "separate guard model (prefill + greedy tokens): "
        + ", ".join(
            f"batch {b}: {_median(v):.3f} s ({int(b) / _median(v):.2f} requests/s)" for b, v in guard_b1.items()
        ),
        f"classify throughput (best end to end) / separate guard throughput (best): {best / guard_rate:.1f}x "
        f"(goal >= 20x: {_goal(best / guard_rate >= 20)}); from pixels: {best_pixels / guard_rate:.1f}x",
    ]
    return lines


def _generate_table(name: str, section: dict[str, Any]) -> list[str]:
    times = section["generate_s"]
    lines = [f"| {name} | batch | plain s | guarded s | overhead |", "| --- | ---: | ---: | ---: | ---: |"]
    for key in sorted(k for k in times if k.startswith("plain_")):
        batch = key.removeprefix("plain_b")
        plain, guarded = _median(times[key]), _median(times[f"guarded_b{batch}"])
        overhead = guarded / plain - 1
        lines.append(
            f"| {name} | {batch} | {plain:.3f} | {guarded:.3f} | {100 * overhead:+.1f} % ({_goal(overhead <= 0.03)}) |"
        )
    return lines


def _train_table(results: dict[str, Any]) -> list[str]:
    lines = ["| stage (NF4 + grad. checkpointing) | LoRA r | samples/s | peak GPU GiB | goal <= 20 GiB |"]
    lines.append("| --- | ---: | ---: | ---: | --- |")
    for name in ("stage1", "stage2_r256", "stage2_r16"):
        section = results.get(name, {})
        if "samples_per_s" not in section:
            continue
        rates = section["samples_per_s"][1:] or section["samples_per_s"]  # the first step compiles and allocates
        memory = max(section["gpu_mem_gib"]) if section["gpu_mem_gib"] else None
        shown = f"{memory:.2f}" if memory is not None else "n/a (CPU)"
        verdict = _goal(memory <= 20) if memory is not None else "n/a"
        lines.append(f"| {name} | {section['lora_r'] or '-'} | {_median(rates):.2f} | {shown} | {verdict} |")
    return lines


def report(results: dict[str, Any]) -> str:
    """Markdown tables of everything the run measured, and which goals were met."""
    machine = results["machine"]
    lines = [
        f"{'tiny' if results['tiny'] else 'LLaVA-1.5-7B'} shapes, bf16, device {results['device']} "
        f"({machine['gpu'] or machine['cpu']}), torch {machine['torch']}, transformers {machine['transformers']}, "
        f"{machine['date_utc']} UTC; whole run {results['wall_s']:.0f} s",
        "",
    ]
    if "pytest" in results:
        lines += [f"pytest -m gpu: {results['pytest']['summary']} (exit status {results['pytest']['returncode']})", ""]
    for name in ("build", *SECTIONS):
        section = results.get(name, {})
        for problem in ("skipped", "error"):
            if problem in section:
                lines.append(f"{name}: {problem}: {section[problem]}")
    if "classify_b1_s" in results.get("bf16", {}):
        lines += ["", *_classify_tables(results["bf16"]), "", *_generate_table("bf16", results["bf16"])]
    if "generate_s" in results.get("nf4", {}):
        lines += ["", *_generate_table("NF4", results["nf4"])]
    lines += ["", *_train_table(results)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main
WORKERS = {"build": build, **SECTIONS}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "runs/gpu_suite"), help="where results go ($OUT)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and counts (the CPU test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget-s", type=float, default=450.0, help="seconds the whole run may take")
    parser.add_argument("--pytest-timeout-s", type=float, default=150.0)
    parser.add_argument("--skip", nargs="*", default=[], choices=["pytest", *SECTIONS], help="sections to leave out")
    parser.add_argument("--scratch", default=None, help="where the temporary checkpoint goes (default: temp dir)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.worker:
        torch.manual_seed(0)
        device = torch.device(args.device)
        result = WORKERS[args.worker](args, Sizes(args.tiny), device)
        args.result.write_text(json.dumps(result))
        return
    results = run_all(args)
    tables = report(results)
    print(tables)
    out = Path(args.out)
    (out / "tables.md").write_text(tables + "\n")
    (out / "raw.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
