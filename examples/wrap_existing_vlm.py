"""Put a guard in front of an app that already serves a LLaVA model: one changed line.

Runs offline on the shipped demo: a tiny LLaVA and the guard trained for it on the synthetic safety world,
loaded with ``from_pretrained`` exactly as a real checkpoint would be. Point MODEL_DIR / GUARD_DIR at your own
to use real weights (MODEL_DIR without GUARD_DIR attaches an untrained guard, whose verdicts are random).

    python examples/wrap_existing_vlm.py
"""

from __future__ import annotations

import os
import sys

from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from psaguard import GuardBlocked, GuardPolicy, SafetyGuard
from psaguard.cli.demo import demo_guard_dir, demo_model_dir, demo_requests


def answer(model, processor, image: Image.Image, question: str) -> str:
    """The app's existing code: chat template, processor, generate, decode."""
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=image, text=text, return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    return processor.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


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

    guarded = guard.wrap(model)  # the one changed line: same generate(**processor(...)) call
    for kind, image, question in demo_requests()[:3]:  # benign, image risk, harmful request
        print(f"[{kind}] {question!r}")
        print("  plain model  :", repr(answer(model, processor, image, question)))
        print("  guarded model:", repr(answer(guarded, processor, image, question)))

    # The guard's own API returns the verdict with the answer.
    _, image, question = demo_requests()[1]
    result = guard.generate(image, question, max_new_tokens=8)
    print(f"guard.generate: action={result.action} rule={result.verdict.rule} generated={result.generated}")
    print(f"  text={result.text!r} prompt_tokens={result.prompt_tokens} completion_tokens={result.completion_tokens}")

    # Policies are data: the same request under a stricter and a blocking policy.
    strict = guard.with_policy(GuardPolicy(level_actions={1: "refuse", 2: "refuse", 3: "refuse"}))
    refused = strict.generate(image, question, max_new_tokens=8)
    print(f"strict policy : action={refused.action} text={refused.text!r}")
    blocking = guard.with_policy(GuardPolicy(level_actions={1: "block", 2: "block", 3: "block"}))
    try:
        print("blocking policy:", repr(answer(blocking.wrap(model), processor, image, question)))
    except GuardBlocked as err:
        print(f"blocking policy: GuardBlocked ({err.verdict.rule})")

    # Streaming: the verdict is known before the first chunk.
    stream = guard.stream(image, question, max_new_tokens=8)
    print(f"stream verdict: {stream.action}; chunks: {list(stream)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
