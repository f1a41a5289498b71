"""``psaguard demo``: a trained tiny guard judging and guarding a few requests from the synthetic world.

The assets in ``psaguard/assets/world_demo`` (a tiny LLaVA that answers questions about the world's
images, with its Stage II LoRA merged in, and the Stage I guard trained for it) come from a real
``psaguard world run`` (see docs/world.md for the command that regenerates them). Everything loads
offline in about a second.
"""

from __future__ import annotations

import json
import tempfile
from importlib import resources
from pathlib import Path

from PIL import Image

__all__ = ["DEMO_ASSETS", "demo_requests", "run_demo"]

DEMO_ASSETS = "assets/world_demo"
"""Folder of the demo's model, guard and examples inside the psaguard package."""


def _assets() -> Path:
    return Path(str(resources.files("psaguard") / DEMO_ASSETS))


def demo_requests() -> list[tuple[str, Image.Image, str]]:
    """The demo's (kind, image, prompt) requests: safe, image risk, harmful text, joint risk, its safe twin."""
    root = _assets()
    requests = []
    for line in (root / "examples.jsonl").read_text().splitlines():
        row = json.loads(line)
        requests.append((row["kind"], Image.open(root / row["image"]).convert("RGB"), row["prompt"]))
    return requests


def run_demo(seed: int = 0) -> None:
    """Load the trained tiny model and guard, print verdicts and guarded answers, and a save/reload check."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from psaguard.guard import SafetyGuard

    torch.manual_seed(seed)  # decoding is greedy; the seed only pins anything else that samples
    root = _assets()
    model = LlavaForConditionalGeneration.from_pretrained(root / "model").eval()
    processor = AutoProcessor.from_pretrained(root / "model")
    guard = SafetyGuard.from_pretrained(root / "guard", model=model, processor=processor)
    print(f"{guard}  (trained on the synthetic safety world: psaguard world run)\n")
    requests = demo_requests()
    verdicts = guard.classify_batch([image for _, image, _ in requests], [prompt for _, _, prompt in requests])
    for (kind, _, prompt), verdict in zip(requests, verdicts):
        top = max(verdict.type_probs, key=verdict.type_probs.get)
        print(
            f"[{kind:10}] {prompt!r:60} -> level={verdict.level.name!r:10} type={verdict.type.name!r:12} "
            f"p({top})={verdict.type_probs[top]:.2f} action={verdict.action} rule={verdict.rule}"
        )
    print("\nguarded generation (greedy):")
    answers = guard.generate_batch(
        [image for _, image, _ in requests],
        [prompt for _, _, prompt in requests],
        return_blocked=True,
        max_new_tokens=24,
        do_sample=False,
    )
    for (kind, _, prompt), answer in zip(requests, answers):
        print(f"[{kind:10}] {prompt!r:60} => ({answer.action}) {answer.text!r}")
    with tempfile.TemporaryDirectory() as tmp:
        guard.save_pretrained(f"{tmp}/guard")
        reloaded = SafetyGuard.from_pretrained(f"{tmp}/guard", model=model, processor=processor)
        again = reloaded.classify_batch([image for _, image, _ in requests], [prompt for _, _, prompt in requests])
    same = all(a.type_probs == v.type_probs and a.level_probs == v.level_probs for a, v in zip(again, verdicts))
    print(f"\nsaved and reloaded: same verdict = {same}")
    print("\nfirst verdict as JSON:\n" + verdicts[0].model_dump_json(indent=2))
