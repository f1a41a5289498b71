"""What custom categories cost: adding one, and classify with 20 of them next to classify without, side by side.

    python benchmarks/category_cost.py                 # the shipped world demo guard and tiny model, CPU
    python benchmarks/category_cost.py --repeats 50 --categories 20 --examples 16
    python benchmarks/category_cost.py --workload --examples 2 --repeats 10   # LLaVA-1.5-7B shapes, ~14 GB temp

Adding a category runs the guard on its examples and negatives (one batched forward pass each) and fits the
scorer; classify then judges every category from the features its pass already has (one small matrix
product and the policy's check per category). Both guards share the model and safety modules and are timed
round-robin, so background load hits them alike.

``--workload`` times a classifier-only guard of the trained shape (random weights) on the random
LLaVA-1.5-7B-shaped checkpoint of ``benchmarks/workload.py``, written to a temporary directory and deleted
afterwards (``--tiny``: the same at tiny shapes, what the test runs): where a real vision tower does the work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import describe_machine
from measure import round_robin, time_call
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
from workload import GUARD_DIR, PROMPT, images, write_workload

from psaguard import SafetyGuard
from psaguard.categories import category_features
from psaguard.classifier_only import load_classifier_parts
from psaguard.cli.demo import DEMO_ASSETS, demo_requests
from psaguard.policy import decide_categories


def _variants(image: Image.Image, count: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    base = np.asarray(image, dtype=np.int16)
    return [
        Image.fromarray((base + rng.integers(-16, 17, base.shape)).clip(0, 255).astype(np.uint8)) for _ in range(count)
    ]


Request = tuple[Image.Image, str]


@contextmanager
def _setup(workload: bool, tiny: bool) -> Iterator[tuple[str, Any, Any, list[Request]]]:
    """The guard's directory, the model and processor it attaches to, and five requests."""
    if not workload:
        root = resources.files("psaguard") / DEMO_ASSETS
        model = AutoModelForImageTextToText.from_pretrained(str(root / "model")).eval()
        processor = AutoProcessor.from_pretrained(str(root / "model"))
        yield str(root / "guard"), model, processor, [(image, prompt) for _, image, prompt in demo_requests()]
        return
    with tempfile.TemporaryDirectory(prefix="psaguard-category-cost-") as tmp:
        directory = write_workload(Path(tmp), tiny)
        model, processor = load_classifier_parts(directory)
        requests = [(image, f"{PROMPT} {index}") for index, image in enumerate(images(5))]
        yield str(directory / GUARD_DIR), model, processor, requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed classify calls per variant")
    parser.add_argument("--categories", type=int, default=20, help="custom categories of the second guard")
    parser.add_argument("--examples", type=int, default=16, help="examples (and as many negatives) per category")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--workload", action="store_true", help="LLaVA-1.5-7B shapes, classifier-only (see above)")
    parser.add_argument("--tiny", action="store_true", help="with --workload: tiny shapes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with _setup(args.workload, args.tiny) as (guard_dir, model, processor, requests):
        # two guards sharing the model and safety modules; the second gets the categories
        plain, custom = (SafetyGuard.from_pretrained(guard_dir, model, processor) for _ in range(2))
        _measure(args, plain, custom, requests)


def _measure(args: argparse.Namespace, plain: SafetyGuard, custom: SafetyGuard, requests: list[Request]) -> None:
    image, prompt = requests[1]
    negatives = [(picture, text) for picture, text in (requests[0], requests[4]) for _ in range(args.examples // 2)]

    add_seconds = []
    for index in range(args.categories):
        examples = [(picture, f"{prompt} {index}") for picture in _variants(image, args.examples, seed=index)]
        add_seconds.append(
            time_call(partial(custom.add_category, f"custom_{index}", examples, level=2, negatives=negatives))
        )

    request = requests[0]
    runs = round_robin(
        {"without": lambda: plain.classify(*request), "with": lambda: custom.classify(*request)}, args.repeats
    )
    without, with_bank = runs["without"].median, runs["with"].median
    bank_seconds = _bank_seconds(custom, request, args.repeats * 10)
    report = {
        "machine": describe_machine(),
        "threads": args.threads,
        "guard": _workload_name(args),
        "add_category_s": {
            "median": statistics.median(add_seconds),
            "max": max(add_seconds),
            "examples": args.examples,
        },
        "classify_ms": {"without": without * 1e3, f"with {args.categories}": with_bank * 1e3},
        "classify_ratio": with_bank / without,
        "classify_spread_ms": {name: [r.low * 1e3, r.high * 1e3] for name, r in runs.items()},
        "categories_alone_ms": bank_seconds * 1e3,
    }
    print(json.dumps(report, indent=2))
    print(
        f"add_category ({args.examples} examples + {len(negatives)} negatives): median "
        f"{statistics.median(add_seconds):.3f} s, max {max(add_seconds):.3f} s"
    )
    print(
        f"classify with {args.categories} categories / without: {with_bank / without:.3f} "
        f"({with_bank * 1e3:.2f} ms vs {without * 1e3:.2f} ms, median of {args.repeats}) on "
        f"{report['machine']['cpu']}, {report['guard']}"
    )
    print(
        f"judging the {args.categories} categories alone (scores from their features + the policy's decision): "
        f"{bank_seconds * 1e3:.3f} ms per request = {bank_seconds / without:.4f} of classify without them"
    )


def _workload_name(args: argparse.Namespace) -> str:
    if not args.workload:
        return "the world demo guard and tiny model"
    return f"classifier-only, random weights, {'tiny' if args.tiny else 'LLaVA-1.5-7B'} shapes"


def _bank_seconds(guard: SafetyGuard, request: Request, repeats: int) -> float:
    """Median seconds of what the categories add to one request: their features, probabilities and the decision."""
    features = guard.backbone.encode_images(**guard.backbone.preprocess(guard.processor, [request[0]]))
    with torch.inference_mode():
        logits = guard.head_logits(features, [request[1]])
    verdict = guard.classify(*request)
    bank, policy, taxonomy = guard.classifier.bank, guard.policy, guard.config.taxonomy

    def judge() -> None:
        inputs = category_features(logits.pooled, logits.prompt, features.patches)
        probs = bank.probabilities(inputs)[0].tolist()
        decide_categories(verdict, bank.categories, probs, policy, taxonomy)

    return round_robin({"bank": judge}, repeats)["bank"].median


if __name__ == "__main__":
    main()
