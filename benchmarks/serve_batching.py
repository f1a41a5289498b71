"""Dynamic batching in ``psaguard serve``: throughput and latency with batching on vs off, side by side in one run.

    python benchmarks/serve_batching.py                                   # tiny model, CPU
    python benchmarks/serve_batching.py --shapes llava-1.5-7b --device cuda --dtype bfloat16

For each mode (batching off = ``max_batch 1``; on = ``--max-batch`` / ``--max-wait-ms``) a server runs on
127.0.0.1 in this process, and closed-loop clients in a second process (so that they do not share the
server's interpreter lock; each sends its next request when the last is answered) post ``/v1/moderations``
requests with one image and a prompt, at each client count. Random weights give
valid timings. At 7B shapes the language model has one decoder layer: classification never runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import multiprocessing
import statistics
import time

import httpx
import numpy as np
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from shapes import llava_15_7b_config
from transformers import LlavaForConditionalGeneration

from psaguard import SafetyGuard
from psaguard.serving import BackgroundServer, BatchingConfig, ServeConfig, create_app
from psaguard.testing.llava import TinyLlavaSpec, build_tiny_llava, build_tiny_processor

SHAPES = {"tiny": TinyLlavaSpec(), "llava-1.5-7b": TinyLlavaSpec(image_size=336, patch_size=14)}
PROMPTS = ("what is shown in this image ?", "describe the colour and the shape please", "is this safe to share ?")


def build_guard(shapes: str, device: str, dtype: torch.dtype) -> SafetyGuard:
    torch.manual_seed(0)
    spec = SHAPES[shapes]
    processor = build_tiny_processor(spec)
    if shapes == "tiny":
        model = build_tiny_llava(spec, processor)
    else:
        config = llava_15_7b_config(processor.tokenizer.convert_tokens_to_ids("<image>"))
        config.text_config.num_hidden_layers = 1  # classification uses the embeddings, never the decoder
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    return SafetyGuard.attach(model.to(device=device, dtype=dtype).eval(), processor)


def request_bodies(count: int, side: int) -> list[dict]:
    rng = np.random.default_rng(0)
    bodies = []
    for index in range(count):
        image = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        parts = [
            {"type": "text", "text": PROMPTS[index % len(PROMPTS)]},
            {"type": "image_url", "image_url": {"url": url}},
        ]
        bodies.append({"input": parts})
    return bodies


async def load(base: str, clients: int, total: int, bodies: list[dict]) -> tuple[float, list[float]]:
    """Wall seconds and per-request latencies (s) of ``total`` requests from ``clients`` closed-loop clients."""
    latencies: list[float] = []
    sent = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < total:
            body = bodies[sent % len(bodies)]
            sent += 1
            start = time.perf_counter()
            response = await http.post("/v1/moderations", json=body)
            latencies.append(time.perf_counter() - start)
            response.raise_for_status()

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return time.perf_counter() - start, latencies


def run_load(base: str, clients: int, total: int, bodies: list[dict]) -> tuple[float, list[float]]:
    """:func:`load` in a fresh event loop (the entry point of the client process)."""
    return asyncio.run(load(base, clients, total, bodies))


def batch_counts(base: str) -> tuple[float, float, float]:
    """(requests judged, classify_batch calls, seconds in classify_batch) so far, from the server's metrics."""
    values = {
        (sample.name, sample.labels.get("stage")): sample.value
        for family in text_string_to_metric_families(httpx.get(base + "/metrics").text)
        for sample in family.samples
    }
    return (
        values.get(("psaguard_batch_size_sum", None), 0.0),
        values.get(("psaguard_batch_size_count", None), 0.0),
        values.get(("psaguard_stage_seconds_sum", "classify"), 0.0),
    )


def model_alone(guard: SafetyGuard, bodies: list[dict], sizes: list[int], repeats: int = 5) -> dict[int, float]:
    """Median ms per request of ``guard.classify_batch`` called directly (no server), at each batch size."""
    items = [_decoded(body) for body in bodies]
    result = {}
    for size in sizes:
        batch = [items[i % len(items)] for i in range(size)]
        guard.classify_batch([image for image, _ in batch], [prompt for _, prompt in batch])  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            guard.classify_batch([image for image, _ in batch], [prompt for _, prompt in batch])
            times.append(time.perf_counter() - start)
        result[size] = statistics.median(times) * 1000 / size
    return result


def _decoded(body: dict) -> tuple[Image.Image, str]:
    text, image = body["input"]
    data = base64.b64decode(image["image_url"]["url"].split(",", 1)[1])
    return Image.open(io.BytesIO(data)).convert("RGB"), text["text"]


def measure(servers: dict[str, str], clients: int, args, bodies, pool) -> dict[str, dict[str, float]]:
    """Throughput, p50/p95 latency (ms) and mean batch size of each server at one client count.

    The servers take turns for ``args.rounds`` rounds, so a shared machine's changing load falls on both
    modes alike; each mode's numbers pool all its rounds.
    """
    total = max(args.requests, clients * args.per_client)
    walls = {name: 0.0 for name in servers}
    latencies: dict[str, list[float]] = {name: [] for name in servers}
    before = {name: batch_counts(base) for name, base in servers.items()}
    for _ in range(args.rounds):
        for name, base in servers.items():
            wall, times = pool.apply(run_load, (base, clients, total, bodies))
            walls[name] += wall
            latencies[name] += times
    rows = {}
    for name, base in servers.items():
        judged, calls, seconds = (after - first for after, first in zip(batch_counts(base), before[name]))
        rows[name] = {
            "rps": total * args.rounds / walls[name],
            "p50": statistics.median(latencies[name]) * 1000,
            "p95": statistics.quantiles(latencies[name], n=20, method="inclusive")[18] * 1000,
            "batch": judged / max(calls, 1.0),
            "model": seconds * 1000 / max(judged, 1.0),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 128], help="concurrent client counts")
    parser.add_argument("--requests", type=int, default=128, help="requests per client count, at least")
    parser.add_argument("--per-client", type=int, default=4, help="requests per client, at least")
    parser.add_argument("--rounds", type=int, default=3, help="turns each mode takes at each client count")
    parser.add_argument("--max-batch", type=int, default=32, help="max batch with batching on")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="max wait with batching on")
    parser.add_argument("--image-side", type=int, default=64, help="side of the random request images, in pixels")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    guard = build_guard(args.shapes, args.device, getattr(torch, args.dtype))
    bodies = request_bodies(16, args.image_side)
    batching_on = BatchingConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    off_app = create_app(guard, ServeConfig(batching=BatchingConfig(max_batch=1, max_wait_ms=0)))
    on_app = create_app(guard, ServeConfig(batching=batching_on))
    rows = {}
    spawn = multiprocessing.get_context("spawn")
    with (
        spawn.Pool(1) as pool,
        BackgroundServer(off_app) as s_off,
        BackgroundServer(on_app) as s_on,
    ):
        for server in (s_off, s_on):
            pool.apply(run_load, (server.root_url, 2, 8, bodies))  # warm-up
        for clients in args.clients:  # both servers share the guard and run at once
            rows[clients] = measure({"off": s_off.root_url, "on": s_on.root_url}, clients, args, bodies, pool)
    print(
        f"shapes={args.shapes} device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} "
        f"batching on: max_batch={args.max_batch} max_wait_ms={args.max_wait_ms:g} rounds={args.rounds}"
    )
    print(
        f"{'clients':>7} | {'req/s off':>9} {'req/s on':>9} {'speedup':>7} | {'p50 off':>8} {'p50 on':>8} | "
        f"{'p95 off':>8} {'p95 on':>8} | {'mean batch on':>13} | {'model off':>9} {'model on':>8}"
    )
    for clients in args.clients:
        a, b = rows[clients]["off"], rows[clients]["on"]
        print(
            f"{clients:>7} | {a['rps']:9.1f} {b['rps']:9.1f} {b['rps'] / a['rps']:7.2f} | {a['p50']:8.1f} "
            f"{b['p50']:8.1f} | {a['p95']:8.1f} {b['p95']:8.1f} | {b['batch']:13.1f} | {a['model']:9.2f} "
            f"{b['model']:8.2f}"
        )
    alone = model_alone(guard, bodies, sorted({1, 4, args.max_batch}))
    print(
        "classify_batch alone (no server), ms per request: "
        + ", ".join(f"batch {n}: {ms:.2f}" for n, ms in alone.items())
    )
    print(
        "latencies in ms; speedup = req/s on / req/s off; model = ms of classify_batch per request (the "
        "server's psaguard_stage_seconds{stage=classify} over the requests judged)"
    )


if __name__ == "__main__":
    main()
