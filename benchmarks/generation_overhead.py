"""Overhead of guarded over plain generation on the tiny LLaVA (CPU by default), printed side by side.

    python benchmarks/generation_overhead.py [--new-tokens 32] [--repeats 10] [--device cpu]

Every variant answers the same chat prompt with greedy decoding and a fixed number of new tokens (EOS is
disabled so all runs decode the same length). The guard is untrained and its policy is set to 'allow', so
every guarded run generates: the numbers measure the guard's machinery, not its decisions. Medians of
``--repeats`` round-robin runs after one warm-up. The tiny model is so small that fixed costs dominate; GPU numbers for
real checkpoints belong to the benchmark suite.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from psaguard import GuardPolicy, SafetyGuard, SafetyGuardConfig, TokensConfig
from psaguard.testing.llava import build_tiny_llava, build_tiny_processor

QUESTION = "what is in this image ?"


def _time_ms(run: Callable[[], object], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000.0


def _round_robin(variants: dict[str, Callable[[], object]], repeats: int, device: str) -> dict[str, list[float]]:
    """Time the variants in turn, ``repeats`` rounds, so background load hits all of them alike."""
    for run in variants.values():
        run()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            times[name].append(_time_ms(run, device))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    processor = build_tiny_processor()
    model = build_tiny_llava(processor=processor).to(args.device)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    allow_all = GuardPolicy(level_actions={1: "allow", 2: "allow", 3: "allow"})
    guards = {
        inject: SafetyGuard.attach(
            model, processor, SafetyGuardConfig(policy=allow_all, tokens=TokensConfig(inject_llm_tokens=inject))
        )
        for inject in (True, False)
    }
    gen = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False}

    def plain() -> None:
        text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        inputs = processor(images=image, text=text, return_tensors="pt").to(args.device)
        with torch.inference_mode():
            model.generate(**inputs, **gen)

    def wrapped() -> None:
        text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        inputs = processor(images=image, text=text, return_tensors="pt").to(args.device)
        guards[True].wrap().generate(**inputs, **gen)

    variants: dict[str, Callable[[], object]] = {
        "plain model.generate": plain,
        "guard.classify only": lambda: guards[True].classify(image, QUESTION),
        "guard.generate, llm_tokens off": lambda: guards[False].generate(image, QUESTION, **gen),
        "guard.generate, llm_tokens on": lambda: guards[True].generate(image, QUESTION, **gen),
        "guard.wrap(model).generate": wrapped,
    }
    times = _round_robin(variants, args.repeats, args.device)
    results = {name: (statistics.median(t), min(t)) for name, t in times.items()}
    base_median, base_min = results["plain model.generate"]
    threads = torch.get_num_threads()
    print(f"tiny LLaVA on {args.device} ({threads} threads), {args.new_tokens} new tokens, {args.repeats} rounds")
    print(f"{'variant':34} {'median ms':>10} {'x plain':>8} {'min ms':>8} {'x plain':>8}")
    for name, (median, fastest) in results.items():
        print(f"{name:34} {median:10.1f} {median / base_median:8.2f} {fastest:8.1f} {fastest / base_min:8.2f}")


if __name__ == "__main__":
    main()
