"""Classifier-only classify against a separate 7B guard model, at real LLaVA-1.5-7B shapes on the CPU.

    python benchmarks/cpu_7b.py --threads 2              # ~14 GB checkpoint in a temp dir, ~10-15 minutes
    python benchmarks/cpu_7b.py --tiny                   # the same run at tiny shapes, seconds

Writes a LLaVA-1.5-7B-shaped checkpoint with random bf16 weights (``benchmarks/shapes.py``) as sharded
safetensors, with a guard of the trained shape (default ``SafetyGuardConfig``, random weights) beside it,
then measures in fresh subprocesses, so that each mode's peak RSS is its own:

- classifier-only (``SafetyGuard.from_pretrained_classifier``, one process per load) in each dtype of
  ``--dtypes``: load time, peak RSS, ``classify`` latency at batch 1 and throughput at batch 4,
  preprocessing included; the FLOPs of one classify and this machine's dense matmul rate in that dtype,
  for how far classify is from the CPU's limit. By default the dtypes this CPU has a native path for
  (float32, and bfloat16 with AVX-512-BF16 or AMX; ``psaguard.dtypes``): bfloat16 without one runs
  several times slower and would take most of the run, so it is skipped, and the output says so;
- the full model with the guard attached, in the dtype ``psaguard.dtypes.choose_dtype`` picks for a bf16
  checkpoint here (skipped, saying so, when that does not fit in the available memory; float32 doubles the
  14 GB): ``classify``; guarded ``generate`` vs plain ``generate`` of
  ``--new-tokens`` tokens; a **separate guard model** of the same shape doing what Llama Guard-style
  guards do (prefill of image + prompt, ``--guard-tokens`` greedy tokens). A second 7B model would not fit
  in memory next to the first and costs what the same weights cost, so it runs on the loaded model;
- the response side, on the same loaded model with a guard of the trained shape plus a response head:
  guarded ``stream`` of ``--stream-tokens`` tokens with the streaming monitor on (the default policy's
  interval and window) and off, the monitor's own response-head time within the monitored streams, and
  ``classify_response`` on a 256-token answer against the separate guard judging the same answer (prefill of
  image + prompt + answer, ``--guard-tokens`` greedy tokens). ``--full-parts response`` runs this side alone.

The output names the CPU and its instruction sets. Each worker runs in its own process group and session,
which is killed with it when the driver stops early (``--worker-timeout``, an exception, SIGTERM); a driver
killed outright takes its worker along (Linux's parent-death signal). ``--tiny`` runs the workers in the
driver's process (peak RSS is then the process's, not each mode's) unless ``--spawn``. The guard's policy
allows everything, so guarded runs always generate. Prints a table and the ratios; with ``--json`` also
writes the raw numbers. The checkpoint is deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from machine import describe_machine
from measure import Runs, into_anonymous_memory, matmul_tflops, peak_rss_bytes, reset_peak_rss, round_robin, rss_bytes
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoProcessor, LlavaForConditionalGeneration
from workload import (
    ALLOW_ALL,
    ANSWER_TOKENS,
    GUARD_DIR,
    GUARD_PROMPT,
    PROMPT,
    allow_answers,
    answer,
    chat_text,
    guard_response_prompt,
    images,
    plain_generate,
    random_checkpoint_bytes,
    write_workload,
)

from psaguard import SafetyGuard
from psaguard.dtypes import DTYPE_CHOICES, choose_dtype, cpu_flags, resolve_dtype

BATCH = 4
RESPONSE_HEAD = {"response_head": True}
GiB = 2**30
CPU = torch.device("cpu")
MATMUL_SIZE = {True: 256, False: 2048}  # tiny: what a CPU without a bf16 path does in well under a second


def _timed(load: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    loaded = load()
    return loaded, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- workers
def build(args: argparse.Namespace) -> dict[str, Any]:
    """Write the random checkpoint, its processor and a trained-shape guard into ``args.checkpoint``."""
    _, seconds = _timed(lambda: write_workload(Path(args.checkpoint), args.tiny))
    return {"write_s": seconds, "peak_rss": peak_rss_bytes()}


def classifier_only(args: argparse.Namespace) -> dict[str, Any]:
    """Load classifier-only and time classify at batch 1 and ``BATCH`` (preprocessing included)."""
    directory = Path(args.checkpoint)
    idle_rss = rss_bytes()
    guard, load_s = _timed(
        lambda: SafetyGuard.from_pretrained_classifier(directory / GUARD_DIR, directory, dtype=args.dtype)
    )
    dtype = guard.model.get_input_embeddings().weight.dtype
    into_anonymous_memory(guard.model)
    load_peak_rss, loaded_rss = peak_rss_bytes(), rss_bytes()
    reset_peak_rss()
    pool = images(BATCH)
    runs = round_robin(
        {
            "classify_b1": lambda: guard.classify(pool[0], PROMPT),
            f"classify_b{BATCH}": lambda: guard.classify_batch(pool, [PROMPT] * BATCH),
        },
        args.classify_repeats,
    )
    return {
        "dtypes": guard.compute_dtypes,
        "load_s": load_s,
        "idle_rss": idle_rss,
        "loaded_rss": loaded_rss,
        "load_peak_rss": load_peak_rss,
        **{name: list(r.values) for name, r in runs.items()},
        **_parts(guard, pool[0]),
        "classify_flops": _flops(lambda: guard.classify(pool[0], PROMPT)),
        "matmul_size": MATMUL_SIZE[args.tiny],
        "matmul_tflops": list(matmul_tflops(dtype, CPU, MATMUL_SIZE[args.tiny]).values),
        "peak_rss": peak_rss_bytes(),
    }


def _parts(guard: SafetyGuard, image: Image.Image) -> dict[str, float]:
    """Seconds of classify's parts (median of 3): preprocessing, vision tower, safety modules."""
    backbone = guard.backbone
    pixels = backbone.preprocess(guard.processor, [image])
    with torch.inference_mode():
        features = backbone.encode_images(**pixels)
        runs = round_robin(
            {
                "preprocess_s": lambda: backbone.preprocess(guard.processor, [image]),
                "vision_tower_s": lambda: backbone.encode_images(**pixels),
                "safety_modules_s": lambda: guard.head_logits(features, [PROMPT]),
            },
            3,
        )
    return {name: r.median for name, r in runs.items()}


def _flops(run: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def full_model(args: argparse.Namespace) -> dict[str, Any]:
    """Load the whole model with the guard; classify, guarded and plain generate, a separate guard model."""
    directory = Path(args.checkpoint)
    idle_rss = rss_bytes()
    dtype = resolve_dtype(args.full_dtype, CPU, torch.bfloat16).torch_dtype
    model, load_s = _timed(lambda: LlavaForConditionalGeneration.from_pretrained(directory, dtype=dtype))
    processor = AutoProcessor.from_pretrained(directory)
    guard = SafetyGuard.from_pretrained(directory / GUARD_DIR, model.eval(), processor, policy=ALLOW_ALL)
    # The response side: the trained shape plus a response head (random weights; the policy allows every answer).
    responding = SafetyGuard.attach(
        model, processor, guard.config.model_copy(update={"head": guard.config.head.model_copy(update=RESPONSE_HEAD)})
    )
    monitored, unmonitored = responding.with_policy(allow_answers(True)), responding.with_policy(allow_answers(False))
    into_anonymous_memory(model)
    load_peak_rss, loaded_rss = peak_rss_bytes(), rss_bytes()
    reset_peak_rss()
    image = images(1)[0]

    def generate(prompt: str, tokens: int) -> Callable[[], object]:
        return plain_generate(model, processor, prompt, [image], tokens, CPU)

    def guarded(tokens: int) -> Callable[[], object]:
        return lambda: guard.generate(image, PROMPT, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)

    def stream(streaming: SafetyGuard, tokens: int) -> Callable[[], object]:
        kwargs = {"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False}
        return lambda: "".join(streaming.stream(image, PROMPT, **kwargs))

    n, g, s = args.new_tokens, args.guard_tokens, args.stream_tokens
    text = answer(processor)
    clock = JudgeClock(monitored)
    judge_s: list[float] = []

    def clocked_stream() -> object:
        before = clock.seconds
        out = stream(monitored, s)()
        judge_s.append(clock.seconds - before)
        return out

    variants: dict[str, Callable[[], object]] = {}
    if "request" in args.full_parts:
        variants |= {
            "classify_b1": lambda: guard.classify(image, PROMPT),
            "plain_generate": generate(PROMPT, n),
            "guarded_generate": guarded(n),
            "separate_guard": generate(GUARD_PROMPT, g),
        }
    if "response" in args.full_parts:
        variants |= {
            "stream_monitor_off": stream(unmonitored, s),
            "stream_monitor_on": clocked_stream,
            "classify_response": lambda: monitored.classify_response(image, PROMPT, text),
            "separate_guard_response": generate(guard_response_prompt(text), g),
        }
    # One warm-up answer of 2 tokens runs every kernel of the generating variants (same model, same kinds of
    # shapes) without paying whole answers on a slow CPU; the monitored stream warms the response head too.
    warmups = dict.fromkeys(["guarded_generate", "separate_guard", "stream_monitor_off", "separate_guard_response"])
    warmups |= {"plain_generate": generate(PROMPT, 2), "stream_monitor_on": stream(monitored, 2)}
    runs = round_robin(variants, args.repeats, warmups=warmups)
    return {
        "dtypes": guard.compute_dtypes,
        "load_s": load_s,
        "idle_rss": idle_rss,
        "loaded_rss": loaded_rss,
        "load_peak_rss": load_peak_rss,
        **{name: list(r.values) for name, r in runs.items()},
        **({"stream_monitor_judge_s": judge_s} if judge_s else {}),
        "prompt_tokens": _input_length(processor, PROMPT),
        "guard_prompt_tokens": _input_length(processor, GUARD_PROMPT),
        "guard_response_prompt_tokens": _input_length(processor, guard_response_prompt(text)),
        "monitor_interval": monitored.policy.response.interval,
        "peak_rss": peak_rss_bytes(),
    }


class JudgeClock:
    """Seconds ``guard``'s response-head calls take (what the streaming monitor runs every few tokens).

    Benchmark instrumentation: shadows ``judge_responses`` on this one guard's response judge.
    """

    def __init__(self, guard: SafetyGuard) -> None:
        self.seconds = 0.0
        judge = guard.classifier.responses
        original = judge.judge_responses

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        judge.judge_responses = timed


def _input_length(processor: Any, prompt: str) -> int:
    """Tokens the language model prefills for ``prompt`` with one image (image tokens included)."""
    inputs = processor(images=images(1)[0], text=chat_text(processor, prompt), return_tensors="pt")
    return int(inputs["input_ids"].shape[1])


WORKERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "build": build,
    "classifier": classifier_only,
    "full": full_model,
}


# ---------------------------------------------------------------------------------------------- driver
class WorkerTimeout(RuntimeError):
    """A worker ran past ``--worker-timeout``; its process group was killed."""


def _die_with_parent() -> None:
    """In the worker, before exec: get SIGKILL when the driver dies, however it dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _kill_group(worker: subprocess.Popen) -> None:
    """Kill the worker's whole process group (it leads its own session) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()


def _spawn(args: argparse.Namespace, role: str, *extra: str) -> dict[str, Any]:
    """Run one worker in a fresh Python process (its own peak RSS) and return what it measured.

    The worker leads its own session and process group; on ``--worker-timeout``, an exception or SIGTERM in
    the driver, the group is killed before the error goes on.
    """
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        command = [sys.executable, __file__, "--worker", role, "--result", result.name, *_worker_args(args), *extra]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        worker = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=_die_with_parent)
        print(
            f"[{time.strftime('%H:%M:%S')}] {role} {' '.join(extra)} (pid {worker.pid}) ...",
            file=sys.stderr,
            flush=True,
        )
        try:
            code = worker.wait(timeout=args.worker_timeout)
        except subprocess.TimeoutExpired:
            _kill_group(worker)
            raise WorkerTimeout(f"{role} worker ran past --worker-timeout {args.worker_timeout} s; killed") from None
        except BaseException:
            _kill_group(worker)
            raise
        if code != 0:
            raise subprocess.CalledProcessError(code, command)
        return json.loads(Path(result.name).read_text())


def _in_process(args: argparse.Namespace, role: str, *extra: str) -> dict[str, Any]:
    """Run one worker in this process (``--tiny`` without ``--spawn``: a Python start costs more than the work)."""
    torch.manual_seed(0)
    return WORKERS[role](parse_args([*_worker_args(args), *extra]))


def _worker_args(args: argparse.Namespace) -> list[str]:
    flags = ["--checkpoint", str(args.checkpoint), "--threads", str(args.threads), "--full-dtype", args.full_dtype]
    for name in ("repeats", "classify_repeats", "new_tokens", "guard_tokens", "stream_tokens"):
        flags += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return flags + ["--full-parts", *args.full_parts] + (["--tiny"] if args.tiny else [])


def _check_disk(directory: Path, tiny: bool) -> None:
    need, free = random_checkpoint_bytes(tiny), shutil.disk_usage(directory).free
    if free < need * 1.1 + GiB:
        raise SystemExit(f"{directory} has {free / GiB:.1f} GiB free; the checkpoint needs {need / GiB:.1f} GiB")


def _available_memory() -> int | None:
    """Bytes of memory available to a new process (Linux's MemAvailable), None where unknown."""
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    line = next((line for line in meminfo.read_text().splitlines() if line.startswith("MemAvailable:")), None)
    return int(line.split()[1]) * 1024 if line else None


def plan_dtypes(requested: list[str] | None, flags: frozenset[str]) -> tuple[list[str], list[str]]:
    """(dtypes to measure classifier-only in, notes on the ones left out) for a CPU with ``flags``."""
    if requested:
        return list(dict.fromkeys(requested)), []
    bf16 = choose_dtype(CPU, torch.bfloat16, flags)
    if bf16.dtype == "bfloat16":
        return ["float32", "bfloat16"], []
    return ["float32"], [f"bfloat16 not measured: {bf16.reason} (--dtypes float32 bfloat16 measures it anyway)"]


def full_mode_fits(args: argparse.Namespace) -> tuple[bool, str]:
    """Whether the full model fits in the available memory in its dtype, and what was compared."""
    dtype = resolve_dtype(args.full_dtype, CPU, torch.bfloat16)
    need = random_checkpoint_bytes(args.tiny) // 2 * dtype.torch_dtype.itemsize  # the checkpoint is bf16
    available = _available_memory()
    note = f"full model in {dtype.dtype} ({dtype.reason}): {need / GiB:.1f} GiB of weights"
    if available is None or args.tiny or need * 1.15 < available:
        return True, note
    return False, f"{note}, {available / GiB:.1f} GiB available: full mode skipped (--full-dtype bfloat16 halves it)"


def _save(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Write what was measured so far to ``--json`` (a long run that fails later keeps its first parts)."""
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **results}, indent=2))


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Build (unless ``--checkpoint`` holds one), measure every mode in its own processes, clean up."""
    owned = args.checkpoint is None
    if owned:
        parent = Path(args.workdir or tempfile.gettempdir())
        _check_disk(parent, args.tiny)
        args.checkpoint = Path(tempfile.mkdtemp(prefix="psaguard-cpu7b-", dir=parent))
    dtypes, notes = plan_dtypes(args.dtypes, cpu_flags())
    fits, full_note = full_mode_fits(args)
    results: dict[str, Any] = {"machine_before": describe_machine(), "notes": [*notes, full_note]}
    run = _in_process if args.tiny and not args.spawn else _spawn
    try:
        if owned:
            results["build"] = run(args, "build")
            _save(args, results)
        if "classifier" in args.modes:
            results["classifier_only"] = {dtype: [] for dtype in dtypes}
            for _ in range(args.load_repeats):
                for dtype in dtypes:  # interleaved, so that background load hits every dtype alike
                    results["classifier_only"][dtype].append(run(args, "classifier", "--dtype", dtype))
                    _save(args, results)
        if "full" in args.modes and fits:
            results["full"] = run(args, "full")
    finally:
        if owned and not args.keep:
            shutil.rmtree(args.checkpoint, ignore_errors=True)
    results["machine_after"] = describe_machine()
    return results


# ---------------------------------------------------------------------------------------------- report
def _runs(values: list[float]) -> Runs:
    return Runs(values=tuple(values))


def _pooled(loads: list[dict[str, Any]], key: str) -> Runs:
    """The runs of ``key`` over every classifier-only process."""
    return _runs([value for load in loads for value in load[key]])


def _row(name: str, runs: Runs) -> str:
    cells = [f"{v:.3f}" for v in (runs.median, runs.low, runs.high)]
    return f"| {name} | {' | '.join(cells)} | {len(runs.values)} |"


def _default_dtype(results: dict[str, Any]) -> str | None:
    """The classifier-only dtype the ratios use: the one ``dtype=None`` picks here, else the first measured."""
    measured = results.get("classifier_only") or {}
    chosen = results["machine_before"]["cpu_bfloat16"]["dtype"]
    return chosen if chosen in measured else next(iter(measured), None)


def summarise(results: dict[str, Any]) -> dict[str, float]:
    """The ratios the run is for, from the raw numbers (those of the modes that ran)."""
    by_dtype, full = results.get("classifier_only") or {}, results.get("full")
    ratios: dict[str, float] = {}
    for dtype, loads in by_dtype.items():
        b1, batch = _pooled(loads, "classify_b1").median, _pooled(loads, f"classify_b{BATCH}").median
        peak = _runs(loads[0]["matmul_tflops"]).median * 1e12
        ratios[f"{dtype}: classify FLOP rate / {dtype} matmul rate, batch 1"] = loads[0]["classify_flops"] / b1 / peak
        ratios[f"{dtype}: classify FLOP rate / {dtype} matmul rate, batch {BATCH}"] = (
            BATCH * loads[0]["classify_flops"] / batch / peak
        )
    medians = {dtype: _pooled(loads, "classify_b1").median for dtype, loads in by_dtype.items()}
    if len(medians) > 1:
        fastest = min(medians.values())
        for dtype, median in medians.items():
            ratios[f"classifier-only classify in {dtype} / the fastest dtype (batch 1)"] = median / fastest
    default = _default_dtype(results)
    requests = bool(full) and "separate_guard" in full  # `--full-parts response` runs no request side
    if requests:
        median = {key: _runs(full[key]).median for key in ("classify_b1", "plain_generate", "guarded_generate")}
        guard = _runs(full["separate_guard"]).median
        ratios["separate guard / full-model classify (latency, batch 1)"] = guard / median["classify_b1"]
        ratios["guarded / plain generate"] = median["guarded_generate"] / median["plain_generate"]
    if full and "stream_monitor_on" in full:  # raw numbers of runs before the response side have none
        on, off = _runs(full["stream_monitor_on"]).median, _runs(full["stream_monitor_off"]).median
        ratios[f"guarded stream, monitor on / off (every {full['monitor_interval']} tokens)"] = on / off
        if "stream_monitor_judge_s" in full:
            shares = [j / t for j, t in zip(full["stream_monitor_judge_s"], full["stream_monitor_on"])]
            ratios["monitor's response-head time / monitored stream (same runs)"] = _runs(shares).median
        judged = _runs(full["classify_response"]).median
        ratios[f"separate guard judging the answer / classify_response ({ANSWER_TOKENS}-token answer)"] = (
            _runs(full["separate_guard_response"]).median / judged
        )
    if default and requests:
        loads = by_dtype[default]
        b1, batch = _pooled(loads, "classify_b1").median, _pooled(loads, f"classify_b{BATCH}").median
        ratios[f"separate guard / classifier-only classify in {default} (latency, batch 1)"] = guard / b1
        ratios[f"classify throughput at batch {BATCH} / separate guard throughput"] = BATCH / batch * guard
        ratios["full-model classify / classifier-only classify"] = median["classify_b1"] / b1
        ratios["classifier-only peak RSS / full-model peak RSS (while measuring)"] = (
            max(r["peak_rss"] for r in loads) / full["peak_rss"]
        )
    return ratios


def _classifier_lines(dtype: str, loads: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Rows of the time table for one dtype, and the note on classify's parts and FLOPs."""
    batch = _pooled(loads, f"classify_b{BATCH}")
    dtype = dtype if dtype != "auto" else f"auto ({loads[0]['dtypes']['model']})"
    rows = [
        _row(f"classifier-only load, {dtype}", _runs([r["load_s"] for r in loads])),
        _row(f"classifier-only classify, batch 1, {dtype}", _pooled(loads, "classify_b1")),
        _row(f"classifier-only classify_batch, batch {BATCH}, {dtype}", batch),
    ]
    first = loads[0]
    note = [
        f"{dtype} classify parts (median of 3, s): preprocess {first['preprocess_s']:.3f}, vision tower "
        f"{first['vision_tower_s']:.3f}, safety modules {first['safety_modules_s']:.3f}; one classify is "
        f"{first['classify_flops'] / 1e9:.1f} GFLOP; {first['matmul_size']}² {dtype} matmul here "
        f"{_runs(first['matmul_tflops']).median:.3f} TFLOP/s; classify at batch {BATCH}: "
        f"{BATCH / batch.median:.2f} images/s",
    ]
    return rows, note


def _full_lines(full: dict[str, Any], args: argparse.Namespace) -> tuple[list[str], list[str]]:
    dtype = full["dtypes"]["model"]
    rows = [_row(f"full model load (from_pretrained + guard), {dtype}", _runs([full["load_s"]]))]
    note = [
        f"prefill lengths: user prompt {full['prompt_tokens']} tokens, separate guard's prompt "
        f"{full['guard_prompt_tokens']} tokens (image tokens included)"
    ]
    if "separate_guard" in full:
        rows += [
            _row("full model + guard: classify, batch 1", _runs(full["classify_b1"])),
            _row(f"plain generate, {args.new_tokens} tokens", _runs(full["plain_generate"])),
            _row(f"guarded generate, {args.new_tokens} tokens", _runs(full["guarded_generate"])),
            _row(f"separate guard model: prefill + {args.guard_tokens} tokens", _runs(full["separate_guard"])),
        ]
    if "stream_monitor_on" in full:
        every = full["monitor_interval"]
        rows += [
            _row(f"guarded stream, {args.stream_tokens} tokens, monitor off", _runs(full["stream_monitor_off"])),
            _row(
                f"guarded stream, {args.stream_tokens} tokens, monitor every {every}", _runs(full["stream_monitor_on"])
            ),
            *(
                [_row("monitor's response-head calls within those streams", _runs(full["stream_monitor_judge_s"]))]
                if "stream_monitor_judge_s" in full
                else []
            ),
            _row(f"classify_response, {ANSWER_TOKENS}-token answer", _runs(full["classify_response"])),
            _row(
                f"separate guard judging the answer: prefill + {args.guard_tokens} tokens",
                _runs(full["separate_guard_response"]),
            ),
        ]
        note.append(
            f"separate guard's prompt with the {ANSWER_TOKENS}-token answer: {full['guard_response_prompt_tokens']}"
            " tokens (image tokens included)"
        )
    return rows, note


def _memory_row(name: str, result: dict[str, Any]) -> str:
    cells = (result[key] / GiB for key in ("idle_rss", "load_peak_rss", "loaded_rss", "peak_rss"))
    return f"| {name} | {' | '.join(f'{v:.2f}' for v in cells)} |"


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    """Markdown tables of the measurements and the ratios."""
    by_dtype, full = results.get("classifier_only") or {}, results.get("full")
    machine = results["machine_before"]
    parts = [_classifier_lines(dtype, loads) for dtype, loads in by_dtype.items()]
    parts += [_full_lines(full, args)] if full else []
    rows = [row for part_rows, _ in parts for row in part_rows]
    notes = [note for _, part_notes in parts for note in part_notes]
    memory = [
        _memory_row(f"classifier-only {dtype}, process {i + 1}", r)
        for dtype, loads in by_dtype.items()
        for i, r in enumerate(loads)
    ]
    memory += [_memory_row(f"full model + guard, {full['dtypes']['model']}", full)] if full else []
    return "\n".join(
        [
            f"{'tiny' if args.tiny else 'LLaVA-1.5-7B'} shapes, bf16 checkpoint, CPU {machine['cpu']} "
            f"({machine['instruction_sets']}; {machine['cores']} cores, {machine['memory_gib']:.0f} GiB), torch "
            f"threads {args.threads}, torch {machine['torch']}, transformers {machine['transformers']}, "
            f"{machine['date_utc']} UTC; load average before {_load(results['machine_before'])}, after "
            f"{_load(results['machine_after'])}",
            f"default dtype here for a bf16 checkpoint: {machine['cpu_bfloat16']['dtype']} "
            f"({machine['cpu_bfloat16']['reason']})",
            *results["notes"],
            "",
            "| measurement (seconds) | median | min | max | runs |",
            "| --- | ---: | ---: | ---: | ---: |",
            *rows,
            "",
            *notes,
            "",
            "| RSS (GiB) | after imports | peak while loading | after load | peak while measuring |",
            "| --- | ---: | ---: | ---: | ---: |",
            *memory,
            "",
            "| ratio | value |",
            "| --- | ---: |",
            *(f"| {name} | {value:.4g} |" for name, value in summarise(results).items()),
        ]
    )


def _load(machine: dict[str, Any]) -> str:
    load = machine.get("load_average")
    return " / ".join(f"{v:.2f}" for v in load) if load else "n/a"


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (seconds; what the test runs)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of every worker")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the full-model variants")
    parser.add_argument("--classify-repeats", type=int, default=3, help="classify rounds per classifier process")
    parser.add_argument(
        "--load-repeats", type=int, default=2, help="classifier-only processes per dtype (one load each)"
    )
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens of the plain and guarded answers")
    parser.add_argument("--guard-tokens", type=int, default=20, help="tokens the separate guard model decodes")
    parser.add_argument(
        "--stream-tokens", type=int, default=16, help="tokens of the guarded streams with the monitor on and off"
    )
    parser.add_argument(
        "--full-parts",
        nargs="+",
        choices=["request", "response"],
        default=["request", "response"],
        help="full-model variants: request (classify, generate, separate guard), response (streams, answers)",
    )
    parser.add_argument("--workdir", help="where the temporary checkpoint goes (default: the temp dir)")
    parser.add_argument("--checkpoint", type=Path, help="reuse a checkpoint written by an earlier --keep run")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint (prints where)")
    parser.add_argument(
        "--modes", nargs="+", choices=["classifier", "full"], default=["classifier", "full"], help="what to measure"
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=DTYPE_CHOICES,
        help="classifier-only dtypes to measure (default: float32, and bfloat16 where the CPU has a native path)",
    )
    parser.add_argument(
        "--full-dtype", default="auto", choices=DTYPE_CHOICES, help="the full model's dtype (default: auto)"
    )
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help=argparse.SUPPRESS)  # of a worker
    parser.add_argument(
        "--worker-timeout", type=float, help="seconds one worker may run before its process group is killed"
    )
    parser.add_argument(
        "--spawn", action="store_true", help="with --tiny: workers in their own processes too (as at real shapes)"
    )
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        torch.manual_seed(0)
        args.result.write_text(json.dumps(WORKERS[args.worker](args)))
        return
    signal.signal(signal.SIGTERM, _stop)  # a terminated driver still kills its worker and removes the checkpoint
    results = run_all(args)
    print(report(results, args))
    if args.keep:
        print(f"checkpoint kept in {args.checkpoint}")
    _save(args, results)


if __name__ == "__main__":
    main()
