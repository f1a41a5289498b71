"""What the vision budget saves on a native-resolution family, measured side by side in one run.

    python benchmarks/vision_budget.py                         # 896^2, 1344^2, 2688^2 on the tiny Qwen2-VL
    python benchmarks/vision_budget.py --sizes 448,896 --budget 1024

The tiny Qwen2-VL (2 tower layers, 14-px patches, random weights) gets Qwen2-VL-7B's own processor limits
(``max_pixels`` 12,845,056: up to 65,536 patches), so without the guard's budget the processor keeps large
images at full size. Each size is classified with the default budget and, where the unbudgeted patch count is
at most ``--max-unbudgeted-patches`` (the tower's attention is quadratic in it), with no budget (2^20).
Prints CPU seconds per classify and the ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from machine import describe_machine
from PIL import Image
from transformers import Qwen2VLImageProcessorPil

from psaguard import SafetyGuard, SafetyGuardConfig
from psaguard.images.budget import DEFAULT_MAX_VISION_PATCHES
from psaguard.testing import build_tiny_family

QWEN2_VL_7B_PIXELS = {"shortest_edge": 56 * 56, "longest_edge": 12_845_056}
PATCH = 14
UNBUDGETED = 1 << 20
PROMPT = "what is shown in this image ?"


def cpu_seconds(guard: SafetyGuard, image: Image.Image, repeats: int) -> float:
    """Least CPU time of ``repeats`` classify calls (after one warm-up)."""
    guard.classify(image, PROMPT)
    times = []
    for _ in range(repeats):
        start = time.process_time()
        guard.classify(image, PROMPT)
        times.append(time.process_time() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="896,1344,2688", help="square image sides in pixels, comma-separated")
    parser.add_argument("--budget", type=int, default=DEFAULT_MAX_VISION_PATCHES)
    parser.add_argument("--max-unbudgeted-patches", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tiny = build_tiny_family("qwen2_vl", overrides={"vision_config": {"patch_size": PATCH}})
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=PATCH, merge_size=2, temporal_patch_size=2, size=QWEN2_VL_7B_PIXELS
    )
    tok = tiny.processor.tokenizer
    processor = type(tiny.processor)(
        image_processor=image_processor, tokenizer=tok, chat_template=tiny.processor.chat_template
    )
    model = tiny.model
    budgeted = SafetyGuard.attach(model, processor, SafetyGuardConfig(max_vision_patches=args.budget))
    unbudgeted = SafetyGuard.attach(model, processor, SafetyGuardConfig(max_vision_patches=UNBUDGETED))
    machine = describe_machine()
    print(f"cpu: {machine.get('cpu')}  threads: {args.threads}  budget: {args.budget} patches")
    print(f"{'image':>11} {'patches':>8} {'budgeted':>8} {'CPU s':>8} {'no budget':>10} {'ratio':>7}")
    rng = np.random.default_rng(0)
    for side in (int(s) for s in args.sizes.split(",")):
        image = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        grid = image_processor(images=[image])["image_grid_thw"][0]
        patches = int(grid.prod())
        kept = budgeted.classifier.preprocess([image])["image_grid_thw"][0]
        with torch.inference_mode():
            t_budget = cpu_seconds(budgeted, image, args.repeats)
            t_plain = cpu_seconds(unbudgeted, image, args.repeats) if patches <= args.max_unbudgeted_patches else None
        plain = f"{t_plain:10.2f} {t_plain / t_budget:7.1f}" if t_plain is not None else f"{'skipped':>10} {'-':>7}"
        print(f"{side:>5}x{side:<5} {patches:>8} {int(kept.prod()):>8} {t_budget:8.2f} {plain}")


if __name__ == "__main__":
    main()
