"""Overhead of the streaming monitor on guarded streams of the tiny LLaVA (CPU by default), side by side.

    python benchmarks/monitor_overhead.py [--new-tokens 64] [--repeats 10] [--intervals 1 8 16]

Every variant streams the same answer with greedy decoding and a fixed number of new tokens. The guard has a
response head (untrained) and its response policy allows every answer, so the monitor judges the answer
every ``interval`` tokens and never stops it: the numbers measure the monitor's work (decode the answer so
far, tokenize it, attend its new tokens with the response head), not its decisions. Medians of
``--repeats`` round-robin runs after one warm-up, with the machine they ran on: wall-clock time, and the
process's CPU time (all threads), which other jobs on a shared machine disturb less.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from machine import describe_machine
from workload import add_overhead_arguments, tiny_stream_setup

from psaguard import GuardPolicy, HeadConfig, ResponsePolicy, SafetyGuard, SafetyGuardConfig

QUESTION = "what is in this image ?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    add_overhead_arguments(parser)
    args = parser.parse_args()
    processor, model, image = tiny_stream_setup(args.threads)
    allow = {1: "allow", 2: "allow", 3: "allow"}
    base = SafetyGuard.attach(model, processor, SafetyGuardConfig(head=HeadConfig(response_head=True)))
    gen = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False}

    def policy(monitor: bool, interval: int = 8) -> GuardPolicy:
        response = ResponsePolicy(monitor=monitor, interval=interval, window=interval, level_actions=allow)
        return GuardPolicy(level_actions=allow, response=response)

    def streamer(guard: SafetyGuard) -> Callable[[], object]:
        return lambda: "".join(guard.stream(image, QUESTION, **gen))

    variants: dict[str, Callable[[], object]] = {"stream, monitor off": streamer(base.with_policy(policy(False)))}
    for interval in args.intervals:
        variants[f"stream, monitor every {interval}"] = streamer(base.with_policy(policy(True, interval)))
    for run in variants.values():
        run()  # warm-up
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[name].append((time.perf_counter() - start) * 1000.0)
            cpu[name].append((time.process_time() - start_cpu) * 1000.0)
    off, off_cpu = statistics.median(wall["stream, monitor off"]), statistics.median(cpu["stream, monitor off"])
    print(json.dumps(describe_machine()))
    print(f"tiny LLaVA, {args.new_tokens} new tokens, {args.repeats} rounds, {torch.get_num_threads()} threads")
    print(f"{'variant':28} {'median ms':>10} {'x off':>7} {'cpu ms':>8} {'cpu x off':>9}")
    for name in variants:
        median, median_cpu = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"{name:28} {median:10.1f} {median / off:7.3f} {median_cpu:8.1f} {median_cpu / off_cpu:9.3f}")


if __name__ == "__main__":
    main()
