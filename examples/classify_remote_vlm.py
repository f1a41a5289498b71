"""Guard a VLM served elsewhere (an HTTP API) with a classifier-only guard: no language model is loaded.

The guard reads only the vision tower and token embeddings of the base checkpoint (about 6% of
LLaVA-1.5-7B), judges each request, and forwards allowed ones, with a safety hint where the policy says
so, to the hosted model. Its verdicts are the ones the same guard gives on the full model.

Runs offline: a tiny random LLaVA is saved to a temp dir and a fresh guard is attached to it and saved,
standing in for a guard trained on the full model. Point MODEL_DIR / GUARD_DIR at your own to use real
weights (MODEL_DIR may be a hub id; only the needed safetensors shards are fetched).

    python examples/classify_remote_vlm.py
"""

from __future__ import annotations

import os
import sys
import tempfile

import torch
from PIL import Image, ImageDraw

from psaguard import GenerationUnavailableError, GuardPolicy, SafetyGuard, SafetyVerdict
from psaguard.tiny import build_tiny_llava, build_tiny_processor, save_tiny_llava


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
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.environ.get("MODEL_DIR") or str(save_tiny_llava(f"{tmp}/model"))
        guard_dir = os.environ.get("GUARD_DIR")
        if not guard_dir:  # fresh, untrained modules: the verdicts below show the mechanics, not a judgement
            torch.manual_seed(0)
            guard_dir = str(SafetyGuard.attach(build_tiny_llava(), build_tiny_processor()).save_pretrained(f"{tmp}/g"))

        guard = SafetyGuard.from_pretrained_classifier(guard_dir, model_dir)
        loaded = sum(p.numel() for p in guard.model.parameters())
        print(f"classifier-only guard: {loaded:,} base-model parameters loaded (vision tower + token embeddings)")

        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).ellipse((8, 8, 56, 56), fill="red")
        for policy_name, policy in (
            ("default", None),
            ("strict", GuardPolicy(level_actions={1: "refuse", 2: "refuse", 3: "refuse"})),
        ):
            judge = guard if policy is None else guard.with_policy(policy)
            verdict, answer = guarded_answer(judge, image, "what color is the circle ?")
            print(f"{policy_name} policy: action={verdict.action} rule={verdict.rule} -> {answer}")

        try:
            guard.generate(image, "what color is the circle ?")
        except GenerationUnavailableError as err:
            print(f"generate(): {type(err).__name__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
