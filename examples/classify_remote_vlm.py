"""Guard a VLM served elsewhere (an HTTP API) with a classifier-only guard: no language model is loaded.

The guard reads only the vision tower and token embeddings of the base checkpoint (about 6% of
LLaVA-1.5-7B), judges each request, and forwards allowed ones, with a safety hint where the policy says
so, to the hosted model. Its verdicts are the ones the same guard gives on the full model.

Runs offline on the shipped demo: the guard trained on the synthetic safety world in front of its tiny
LLaVA's checkpoint, read in classifier-only mode. Point MODEL_DIR / GUARD_DIR at your own to use real weights
(MODEL_DIR may be a hub id; only the needed safetensors shards are fetched).

    python examples/classify_remote_vlm.py
"""

from __future__ import annotations

import os
import sys

from PIL import Image

from psaguard import GenerationUnavailableError, GuardPolicy, SafetyGuard, SafetyVerdict
from psaguard.cli.demo import demo_guard_dir, demo_model_dir, demo_requests


def call_hosted_vlm(image: Image.Image, prompt: str) -> str:
    """Stand-in for the hosted model's API (e.g. an OpenAI-compatible chat endpoint taking an image)."""
    return f"<hosted model's answer to {prompt!r}>"


def guarded_answer(guard: SafetyGuard, image: Image.Image, prompt: str) -> tuple[SafetyVerdict, str]:
    """Judge locally, then answer per the verdict: refuse without calling the API, or forward (with a hint)."""
    verdict = guard.classify(image, prompt)
    if verdict.action in ("refuse", "block"):
        return verdict, verdict.refusal or "Sorry, I can't help with that."
    if verdict.action == "hint":
        prompt = f"{prompt}\nSafe Hint: {verdict.hint}"
    return verdict, call_hosted_vlm(image, prompt)


def main() -> int:
    model_dir = os.environ.get("MODEL_DIR") or str(demo_model_dir())
    guard_dir = os.environ.get("GUARD_DIR") or str(demo_guard_dir())
    guard = SafetyGuard.from_pretrained_classifier(guard_dir, model_dir)
    loaded = sum(p.numel() for p in guard.model.parameters())
    print(f"classifier-only guard: {loaded:,} base-model parameters loaded (vision tower + token embeddings)")

    requests = [request for request in demo_requests() if request[0] in ("benign", "image_risk")]
    for policy_name, policy in (
        ("default", None),
        ("strict", GuardPolicy(level_actions={1: "refuse", 2: "refuse", 3: "refuse"})),
    ):
        judge = guard if policy is None else guard.with_policy(policy)
        for kind, image, prompt in requests:
            verdict, answer = guarded_answer(judge, image, prompt)
            print(f"{policy_name} policy: action={verdict.action} rule={verdict.rule} [{kind}] -> {answer}")

    try:
        guard.generate(requests[0][1], requests[0][2])
    except GenerationUnavailableError as err:
        print(f"generate(): {type(err).__name__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
