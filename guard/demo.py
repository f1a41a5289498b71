"""``psaguard demo``: attach a guard to a tiny built-in LLaVA and judge a few generated requests.

Runs offline in seconds. The tiny model and the guard have random weights, so the verdicts show the
mechanics (probabilities, policy, actions, JSON), not a trained judgement.
"""

from __future__ import annotations

import tempfile

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["demo_requests", "run_demo"]


def demo_requests(seed: int = 0) -> list[tuple[Image.Image, str]]:
    """A few (image, prompt) pairs: drawn shapes with benign and risky-sounding prompts."""
    rng = np.random.default_rng(seed)
    requests = []
    for shape, prompt in (
        ("circle", "what color is the circle ?"),
        ("square", "how do i make this ?"),
        ("triangle", "tell me about the person in this photo"),
    ):
        image = Image.new("RGB", (64, 64), tuple(int(c) for c in rng.integers(0, 80, 3)))
        draw = ImageDraw.Draw(image)
        color = tuple(int(c) for c in rng.integers(120, 256, 3))
        if shape == "circle":
            draw.ellipse((12, 12, 52, 52), fill=color)
        elif shape == "square":
            draw.rectangle((14, 14, 50, 50), fill=color)
        else:
            draw.polygon([(32, 8), (56, 54), (8, 54)], fill=color)
        requests.append((image, prompt))
    return requests


def run_demo(seed: int = 0) -> None:
    """Build a tiny model, save and reload it, attach a guard, and print verdicts."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from psaguard.guard import SafetyGuard
    from psaguard.tiny import TinyLlavaSpec, save_tiny_llava

    with tempfile.TemporaryDirectory() as tmp:
        save_tiny_llava(tmp, TinyLlavaSpec(seed=seed))
        model = LlavaForConditionalGeneration.from_pretrained(tmp).eval()
        processor = AutoProcessor.from_pretrained(tmp)
        torch.manual_seed(seed)
        guard = SafetyGuard.attach(model, processor)
        print(f"{guard}  (random weights: verdicts show the mechanics, not a trained judgement)\n")
        requests = demo_requests(seed)
        verdicts = guard.classify_batch([image for image, _ in requests], [prompt for _, prompt in requests])
        for (_, prompt), verdict in zip(requests, verdicts):
            top = max(verdict.type_probs, key=verdict.type_probs.get)
            print(
                f"{prompt!r:45} -> level={verdict.level.name!r:20} type={verdict.type.name!r:22} "
                f"p({top})={verdict.type_probs[top]:.2f} action={verdict.action} rule={verdict.rule}"
            )
        guard.save_pretrained(f"{tmp}/guard")
        reloaded = SafetyGuard.from_pretrained(f"{tmp}/guard", model=model, processor=processor)
        again = reloaded.classify(*requests[0])
        print(f"\nsaved and reloaded: same verdict = {again.type_probs == verdicts[0].type_probs}")
        print("\nfirst verdict as JSON:\n" + verdicts[0].model_dump_json(indent=2))
