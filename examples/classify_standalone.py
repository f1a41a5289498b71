"""Standalone pre-generation risk classification: ``guard.classify(image, prompt)`` without running the LLM.

Runs offline on the shipped demo: a tiny LLaVA and the guard trained for it on the synthetic safety world,
loaded with ``from_pretrained`` exactly as a real checkpoint would be. Point MODEL_DIR / GUARD_DIR at your own
to use real weights (MODEL_DIR without GUARD_DIR attaches an untrained guard, whose verdicts are random).

    python examples/classify_standalone.py
"""

from __future__ import annotations

import os
import sys

from transformers import AutoProcessor, LlavaForConditionalGeneration

from psaguard import GuardPolicy, SafetyGuard, TypeRule
from psaguard.cli.demo import demo_guard_dir, demo_model_dir, demo_requests


def main() -> int:
    model_dir = os.environ.get("MODEL_DIR") or demo_model_dir()
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)

    guard_dir = os.environ.get("GUARD_DIR") or (None if "MODEL_DIR" in os.environ else demo_guard_dir())
    if guard_dir:
        guard = SafetyGuard.from_pretrained(guard_dir, model=model, processor=processor)
    else:
        print("note: no GUARD_DIR: attaching an untrained guard, so the verdicts below are random")
        guard = SafetyGuard.attach(model, processor)

    for kind, image, prompt in demo_requests():
        verdict = guard.classify(image, prompt)
        print(f"[{kind}] {prompt!r}: level={verdict.level.name!r} type={verdict.type.name!r} action={verdict.action}")
    _, image, prompt = next(request for request in demo_requests() if request[0] == "image_risk")
    verdict = guard.classify(image, prompt)
    print(verdict.model_dump_json(indent=2))

    # Policies are data: switch one type's defence off without touching the weights.
    relaxed = guard.with_policy(GuardPolicy(types={verdict.type.code: TypeRule(enabled=False)}))
    print(f"with {verdict.type.code!r} disabled:", relaxed.classify(image, prompt).action)
    return 0


if __name__ == "__main__":
    sys.exit(main())
