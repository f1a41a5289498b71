"""Standalone pre-generation risk classification: ``guard.classify(image, prompt)`` without running the LLM.

Runs offline: a tiny random LLaVA is built and saved to a temp dir, then loaded with ``from_pretrained``
exactly as a real checkpoint would be. Point MODEL_DIR / GUARD_DIR at your own to use real weights.

    python examples/classify_standalone.py
"""

from __future__ import annotations

import os
import sys
import tempfile

from PIL import Image, ImageDraw
from transformers import AutoProcessor, LlavaForConditionalGeneration

from psaguard import GuardPolicy, SafetyGuard, TypeRule
from psaguard.tiny import save_tiny_llava


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.environ.get("MODEL_DIR") or str(save_tiny_llava(f"{tmp}/model"))
        model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
        processor = AutoProcessor.from_pretrained(model_dir)

        guard_dir = os.environ.get("GUARD_DIR")
        if guard_dir:
            guard = SafetyGuard.from_pretrained(guard_dir, model=model, processor=processor)
        else:  # fresh, untrained modules: the verdicts below show the API, not a trained judgement
            guard = SafetyGuard.attach(model, processor)

        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).ellipse((8, 8, 56, 56), fill="red")

        verdict = guard.classify(image, "what color is the circle ?")
        print(f"level={verdict.level.name!r} type={verdict.type.name!r} action={verdict.action} rule={verdict.rule}")
        print(verdict.model_dump_json(indent=2))

        # Policies are data: switch one type's defence off without touching the weights.
        relaxed = guard.with_policy(GuardPolicy(types={verdict.type.code: TypeRule(enabled=False)}))
        print("with that type disabled:", relaxed.classify(image, "what color is the circle ?").action)
    return 0


if __name__ == "__main__":
    sys.exit(main())
