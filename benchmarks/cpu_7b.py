"""Classifier-only classify against a separate 7B guard model, at real LLaVA-1.5-7B shapes on the CPU.

    python benchmarks/cpu_7b.py --threads 2              # ~14 GB checkpoint in a temp dir, tens of minutes
    python benchmarks/cpu_7b.py --tiny                   # the same run at tiny shapes, seconds

Writes a LLaVA-1.5-7B-shaped checkpoint with random bf16 weights (``benchmarks/shapes.py``) as sharded
safetensors, with a guard of the trained shape (default ``SafetyGuardConfig``, random weights) beside it,
then measures in fresh subprocesses, so that each mode's peak RSS is its own:

- classifier-only (``SafetyGuard.from_pretrained_classifier``, one process per load): load time, peak
  RSS, ``classify`` latency at batch 1 and throughput at batch 4, preprocessing included; the FLOPs of one
  classify and this machine's dense bf16 matmul rate, for how far classify is from the CPU's limit;
- the full model with the guard attached: ``classify``; guarded ``generate`` vs plain ``generate`` of
  ``--new-tokens`` tokens; a **separate guard model** of the same shape doing what Llama Guard-style
  guards do (prefill of image + prompt, ``--guard-tokens`` greedy tokens). A second 7B model would not fit
  in memory next to the first and costs what the same weights cost, so it runs on the loaded model.

The guard's policy allows everything, so guarded runs always generate. Prints a table and the ratios; with
``--json`` also writes the raw numbers. The checkpoint is deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import describe_machine
from measure import Runs, matmul_tflops, peak_rss_bytes, round_robin, rss_bytes
from PIL import Image
from random_checkpoint import checkpoint_bytes, write_random_checkpoint
from shapes import llava_15_7b_config
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoProcessor, LlavaForConditionalGeneration

from psaguard import GuardPolicy, SafetyGuard
from psaguard.classifier_only import load_classifier_parts
from psaguard.tiny import TinyLlavaSpec, build_tiny_llava, build_tiny_processor

PROMPT = "what is shown in this image ? describe the colour and the shape please"
# What a Llama Guard-style guard model is asked. Kept short, so that the separate guard's cost is a lower
# bound: real templates list the whole hazard taxonomy, a few hundred tokens more.
GUARD_PROMPT = (
    "task : check if there is unsafe content in the user message with the image according to our safety "
    f"policy . user : {PROMPT} . provide your safety assessment : say safe or unsafe , and if unsafe the "
    "violated categories ."
)
ALLOW_ALL = GuardPolicy(level_actions={1: "allow", 2: "allow", 3: "allow"})
GUARD_DIR = "guard"
IMAGE_SIDES = (640, 480)  # a typical photo (COCO's size), resized and cropped by the processor
BATCH = 4
GiB = 2**30


# ---------------------------------------------------------------------------------------------- shapes
def _processor(tiny: bool):  # -> LlavaProcessor
    return build_tiny_processor(TinyLlavaSpec() if tiny else TinyLlavaSpec(image_size=336, patch_size=14))


def _model_config(tiny: bool, processor: Any):  # -> LlavaConfig
    if tiny:
        return build_tiny_llava(processor=processor).config
    tok = processor.tokenizer
    config = llava_15_7b_config(tok.convert_tokens_to_ids("<image>"))
    for part in (config, config.text_config):  # the word-level tokenizer's special tokens, for generate
        part.pad_token_id, part.bos_token_id, part.eos_token_id = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    return config


def _images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    width, height = IMAGE_SIDES
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(count)]


def _timed(load: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    loaded = load()
    return loaded, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- workers
def build(args: argparse.Namespace) -> dict[str, Any]:
    """Write the random checkpoint, its processor and a trained-shape guard into ``args.checkpoint``."""
    directory = Path(args.checkpoint)
    processor = _processor(args.tiny)
    config = _model_config(args.tiny, processor)
    shard = 64 * 1024 if args.tiny else 2 * GiB  # several shards at tiny shapes too
    _, seconds = _timed(
        lambda: write_random_checkpoint(
            LlavaForConditionalGeneration, config, directory, torch.bfloat16, shard_bytes=shard
        )
    )
    processor.save_pretrained(directory)
    # The guard is sized from the classifier-only parts: all it reads of the model.
    model, processor = load_classifier_parts(directory, processor)
    SafetyGuard.attach(model, processor).save_pretrained(directory / GUARD_DIR)
    return {"write_s": seconds, "peak_rss": peak_rss_bytes()}


def classifier_only(args: argparse.Namespace) -> dict[str, Any]:
    """Load classifier-only and time classify at batch 1 and ``BATCH`` (preprocessing included)."""
    directory = Path(args.checkpoint)
    idle_rss = rss_bytes()
    guard, load_s = _timed(
        lambda: SafetyGuard.from_pretrained_classifier(directory / GUARD_DIR, directory, dtype=torch.bfloat16)
    )
    loaded_rss = rss_bytes()
    images = _images(BATCH)
    runs = round_robin(
        {
            "classify_b1": lambda: guard.classify(images[0], PROMPT),
            f"classify_b{BATCH}": lambda: guard.classify_batch(images, [PROMPT] * BATCH),
        },
        args.classify_repeats,
    )
    return {
        "load_s": load_s,
        "idle_rss": idle_rss,
        "loaded_rss": loaded_rss,
        **{name: list(r.values) for name, r in runs.items()},
        **_parts(guard, images[0]),
        "classify_flops": _flops(lambda: guard.classify(images[0], PROMPT)),
        "matmul_tflops": list(matmul_tflops(torch.bfloat16, torch.device("cpu")).values),
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
    model, load_s = _timed(lambda: LlavaForConditionalGeneration.from_pretrained(directory, dtype=torch.bfloat16))
    processor = AutoProcessor.from_pretrained(directory)
    guard = SafetyGuard.from_pretrained(directory / GUARD_DIR, model.eval(), processor, policy=ALLOW_ALL)
    loaded_rss = rss_bytes()
    image = _images(1)[0]

    def generate(prompt: str, tokens: int) -> Callable[[], object]:
        chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)

        def run() -> None:
            inputs = processor(images=image, text=text, return_tensors="pt")
            with torch.inference_mode():
                model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)

        return run

    def guarded(tokens: int) -> Callable[[], object]:
        return lambda: guard.generate(image, PROMPT, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)

    n, g = args.new_tokens, args.guard_tokens
    # Warm-ups decode 2 tokens: every kernel runs once without paying a whole answer.
    runs = round_robin(
        {
            "classify_b1": lambda: guard.classify(image, PROMPT),
            "plain_generate": generate(PROMPT, n),
            "guarded_generate": guarded(n),
            "separate_guard": generate(GUARD_PROMPT, g),
        },
        args.repeats,
        warmups={
            "plain_generate": generate(PROMPT, 2),
            "guarded_generate": guarded(2),
            "separate_guard": generate(GUARD_PROMPT, 2),
        },
    )
    return {
        "load_s": load_s,
        "idle_rss": idle_rss,
        "loaded_rss": loaded_rss,
        **{name: list(r.values) for name, r in runs.items()},
        "prompt_tokens": _input_length(processor, PROMPT),
        "guard_prompt_tokens": _input_length(processor, GUARD_PROMPT),
        "peak_rss": peak_rss_bytes(),
    }


def _input_length(processor: Any, prompt: str) -> int:
    """Tokens the language model prefills for ``prompt`` with one image (image tokens included)."""
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    return int(processor(images=_images(1)[0], text=text, return_tensors="pt")["input_ids"].shape[1])


WORKERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "build": build,
    "classifier": classifier_only,
    "full": full_model,
}


# ---------------------------------------------------------------------------------------------- driver
def _spawn(args: argparse.Namespace, role: str) -> dict[str, Any]:
    """Run one worker in a fresh Python process (its own peak RSS) and return what it measured."""
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        command = [sys.executable, __file__, "--worker", role, "--result", result.name, *_worker_args(args)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        print(f"[{time.strftime('%H:%M:%S')}] {role} ...", file=sys.stderr, flush=True)
        subprocess.run(command, check=True, env=env)
        return json.loads(Path(result.name).read_text())


def _worker_args(args: argparse.Namespace) -> list[str]:
    flags = ["--checkpoint", str(args.checkpoint), "--threads", str(args.threads)]
    for name in ("repeats", "classify_repeats", "new_tokens", "guard_tokens"):
        flags += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    return flags + (["--tiny"] if args.tiny else [])


def _check_disk(directory: Path, tiny: bool) -> None:
    processor = _processor(tiny)
    with torch.device("meta"):
        need = checkpoint_bytes(LlavaForConditionalGeneration(_model_config(tiny, processor)).to(torch.bfloat16))
    free = shutil.disk_usage(directory).free
    if free < need * 1.1 + GiB:
        raise SystemExit(f"{directory} has {free / GiB:.1f} GiB free; the checkpoint needs {need / GiB:.1f} GiB")


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Build (unless ``--checkpoint`` holds one), measure every mode in its own processes, clean up."""
    owned = args.checkpoint is None
    if owned:
        parent = Path(args.workdir or tempfile.gettempdir())
        _check_disk(parent, args.tiny)
        args.checkpoint = Path(tempfile.mkdtemp(prefix="psaguard-cpu7b-", dir=parent))
    results: dict[str, Any] = {"machine_before": describe_machine()}
    try:
        if owned:
            results["build"] = _spawn(args, "build")
        classifier = [_spawn(args, "classifier") for _ in range(args.load_repeats)]
        results["classifier_only"] = classifier
        results["full"] = _spawn(args, "full")
    finally:
        if owned and not args.keep:
            shutil.rmtree(args.checkpoint, ignore_errors=True)
    results["machine_after"] = describe_machine()
    return results


# ---------------------------------------------------------------------------------------------- report
def _runs(values: list[float]) -> Runs:
    return Runs(values=tuple(values))


def _row(name: str, runs: Runs, unit: float = 1.0, fmt: str = "{:.3f}") -> str:
    cells = [fmt.format(v * unit) for v in (runs.median, runs.low, runs.high)]
    return f"| {name} | {' | '.join(cells)} | {len(runs.values)} |"


def summarise(results: dict[str, Any]) -> dict[str, float]:
    """The ratios the run is for, from the raw numbers."""
    loads = results["classifier_only"]
    only = {key: sum((_runs(r[key]) for r in loads), Runs(values=())) for key in ("classify_b1", f"classify_b{BATCH}")}
    full = {
        key: _runs(results["full"][key])
        for key in ("classify_b1", "plain_generate", "guarded_generate", "separate_guard")
    }
    b1, batch = only["classify_b1"].median, only[f"classify_b{BATCH}"].median
    peak_flops = _runs(loads[0]["matmul_tflops"]).median * 1e12
    return {
        "separate_guard / classifier-only classify (latency, batch 1)": full["separate_guard"].median / b1,
        f"classify throughput at batch {BATCH} / separate guard throughput": BATCH
        / batch
        * full["separate_guard"].median,
        "separate_guard / full-model classify (latency, batch 1)": full["separate_guard"].median
        / full["classify_b1"].median,
        "full-model classify / classifier-only classify": full["classify_b1"].median / b1,
        "guarded / plain generate": full["guarded_generate"].median / full["plain_generate"].median,
        "classifier-only peak RSS / full-model peak RSS": max(r["peak_rss"] for r in loads)
        / results["full"]["peak_rss"],
        "classify FLOP rate / bf16 matmul rate (batch 1)": loads[0]["classify_flops"] / b1 / peak_flops,
        f"classify FLOP rate / bf16 matmul rate (batch {BATCH})": BATCH
        * loads[0]["classify_flops"]
        / batch
        / peak_flops,
    }


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    """Markdown tables of the measurements and the ratios."""
    loads, full = results["classifier_only"], results["full"]
    machine = results["machine_before"]
    only = {key: sum((_runs(r[key]) for r in loads), Runs(values=())) for key in ("classify_b1", f"classify_b{BATCH}")}
    lines = [
        f"{'tiny' if args.tiny else 'LLaVA-1.5-7B'} shapes, bf16, CPU {machine['cpu']} ({machine['cores']} cores, "
        f"{machine['memory_gib']:.0f} GiB), torch threads {args.threads}, torch {machine['torch']}, "
        f"transformers {machine['transformers']}, {machine['date_utc']} UTC; load average before "
        f"{_load(results['machine_before'])}, after {_load(results['machine_after'])}",
        "",
        "| measurement (seconds) | median | min | max | runs |",
        "| --- | ---: | ---: | ---: | ---: |",
        _row("classifier-only load", _runs([r["load_s"] for r in loads])),
        _row("classifier-only classify, batch 1", only["classify_b1"]),
        _row(f"classifier-only classify_batch, batch {BATCH}", only[f"classify_b{BATCH}"]),
        _row("full model load (from_pretrained + guard)", _runs([full["load_s"]])),
        _row("full model + guard: classify, batch 1", _runs(full["classify_b1"])),
        _row(f"plain generate, {args.new_tokens} tokens", _runs(full["plain_generate"])),
        _row(f"guarded generate, {args.new_tokens} tokens", _runs(full["guarded_generate"])),
        _row(f"separate guard model: prefill + {args.guard_tokens} tokens", _runs(full["separate_guard"])),
        "",
        f"classify parts (median of 3, s): preprocess {loads[0]['preprocess_s']:.3f}, vision tower "
        f"{loads[0]['vision_tower_s']:.3f}, safety modules {loads[0]['safety_modules_s']:.3f}; one classify is "
        f"{loads[0]['classify_flops'] / 1e9:.1f} GFLOP; bf16 matmul here {_runs(loads[0]['matmul_tflops']).median:.3f} "
        f"TFLOP/s; classify at batch {BATCH}: {BATCH / only[f'classify_b{BATCH}'].median:.2f} images/s",
        f"prefill lengths: user prompt {full['prompt_tokens']} tokens, separate guard's prompt "
        f"{full['guard_prompt_tokens']} tokens (image tokens included)",
        "",
        "| peak RSS (GiB) | after imports | after load | peak |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| classifier-only, process {i + 1} | {r['idle_rss'] / GiB:.2f} | {r['loaded_rss'] / GiB:.2f} | "
            f"{r['peak_rss'] / GiB:.2f} |"
            for i, r in enumerate(loads)
        ),
        f"| full model + guard | {full['idle_rss'] / GiB:.2f} | {full['loaded_rss'] / GiB:.2f} | "
        f"{full['peak_rss'] / GiB:.2f} |",
        "",
        "| ratio | value |",
        "| --- | ---: |",
        *(f"| {name} | {value:.3f} |" for name, value in summarise(results).items()),
    ]
    return "\n".join(lines)


def _load(machine: dict[str, Any]) -> str:
    load = machine.get("load_average")
    return " / ".join(f"{v:.2f}" for v in load) if load else "n/a"


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (seconds; what the test runs)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of every worker")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the full-model variants")
    parser.add_argument("--classify-repeats", type=int, default=5, help="classify rounds per classifier process")
    parser.add_argument("--load-repeats", type=int, default=3, help="classifier-only processes (one load each)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens of the plain and guarded answers")
    parser.add_argument("--guard-tokens", type=int, default=20, help="tokens the separate guard model decodes")
    parser.add_argument("--workdir", help="where the temporary checkpoint goes (default: the temp dir)")
    parser.add_argument("--checkpoint", type=Path, help="reuse a checkpoint written by an earlier --keep run")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint (prints where)")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        torch.manual_seed(0)
        args.result.write_text(json.dumps(WORKERS[args.worker](args)))
        return
    results = run_all(args)
    print(report(results, args))
    if args.keep:
        print(f"checkpoint kept in {args.checkpoint}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **results}, indent=2))


if __name__ == "__main__":
    main()
