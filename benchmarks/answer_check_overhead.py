"""What judging a hosted model's streamed answer costs in ``guarded()``: the tiny LLaVA guard, CPU, side by side.

    python benchmarks/answer_check_overhead.py [--words 64] [--repeats 10] [--intervals 1 8 16]

A fake chat model (langchain-core's ``GenericFakeChatModel``) streams the same ``--words``-word answer
instantly, so the time is the guard's alone: judging the request, then (answer checks on) one vision pass for
the answer and one response-head call every ``interval`` tokens of the guard's tokenizer, plus tokenizing the
answer so far once ``interval`` new characters have arrived. The response policy allows every answer, so
nothing stops. Printed: the median wall time of one guarded stream per variant and the time it adds to the
variant without answer checks (a real hosted model's own latency comes on top of both). Medians of
``--repeats`` round-robin runs after one warm-up, with the machine they ran on.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import time
from collections.abc import Callable

import torch
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from machine import describe_machine
from workload import add_overhead_arguments, tiny_stream_setup

from psaguard import GuardPolicy, HeadConfig, ResponsePolicy, SafetyGuard, SafetyGuardConfig
from psaguard.adapters import guarded

QUESTION = "what is in this image ?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=64)
    add_overhead_arguments(parser)
    args = parser.parse_args()
    processor, model, image = tiny_stream_setup(args.threads)
    answer = " ".join(["a red circle on a white background"] * (args.words // 7 + 1)).split()[: args.words]
    answer_text = " ".join(answer)
    allow = {1: "allow", 2: "allow", 3: "allow"}
    base = SafetyGuard.attach(model, processor, SafetyGuardConfig(head=HeadConfig(response_head=True)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    block = {"type": "image", "base64": base64.b64encode(buffer.getvalue()).decode(), "mime_type": "image/png"}
    request = [HumanMessage(content=[block, {"type": "text", "text": QUESTION}])]

    def streamer(interval: int | None) -> Callable[[], object]:
        response = ResponsePolicy(interval=interval or 8, window=interval or 8, level_actions=allow)
        guard = base.with_policy(GuardPolicy(level_actions=allow, response=response))

        def run() -> str:
            hosted = GenericFakeChatModel(messages=iter([AIMessage(content=answer_text)]))
            gate = guarded(hosted, guard, check_answers=interval is not None)
            return "".join(chunk.content for chunk in gate.stream(request))

        return run

    variants: dict[str, Callable[[], object]] = {"answer checks off": streamer(None)}
    for interval in args.intervals:
        variants[f"checked every {interval} tokens"] = streamer(interval)
    for run in variants.values():
        if run() != answer_text:  # warm-up, and the answer must come out whole
            raise SystemExit("the guarded stream changed a safe answer")
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1000.0)
    off = statistics.median(times["answer checks off"])
    print(json.dumps(describe_machine()))
    print(f"tiny LLaVA guard, {args.words}-word answer, {args.repeats} rounds, {torch.get_num_threads()} threads")
    print(f"{'variant':28} {'median ms':>10} {'+ms vs off':>11}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:28} {median:10.1f} {median - off:11.1f}")


if __name__ == "__main__":
    main()
