"""Put a guard in front of an app that already serves a LLaVA model: one changed line.

Runs offline: a tiny random LLaVA is built and saved to a temp dir, then loaded with ``from_pretrained``
exactly as a real checkpoint would be. Point MODEL_DIR / GUARD_DIR at your own to use real weights.

    python examples/wrap_existing_vlm.py
"""

from __future__ import annotations

import os
import sys
import tempfile

import torch
from PIL import Image, ImageDraw
from transformers import AutoProcessor, LlavaForConditionalGeneration

from psaguard import GuardBlocked, GuardPolicy, SafetyGuard
from psaguard.tiny import save_tiny_llava


def answer(model, processor, image: Image.Image, question: str) -> str:
    """The app's existing code: chat template, processor, generate, decode."""
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=image, text=text, return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    return processor.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.environ.get("MODEL_DIR") or str(save_tiny_llava(f"{tmp}/model"))
        model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
        processor = AutoProcessor.from_pretrained(model_dir)
        guard_dir = os.environ.get("GUARD_DIR")
        if guard_dir:
            guard = SafetyGuard.from_pretrained(guard_dir, model=model, processor=processor)
        else:  # fresh, untrained modules: the verdicts below show the mechanics, not a trained judgement
            torch.manual_seed(0)
            guard = SafetyGuard.attach(model, processor)

        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).ellipse((8, 8, 56, 56), fill="red")
        question = "what color is the circle ?"

        # Random tiny weights: the words are noise (ids beyond the word list decode to nothing).
        print("plain model  :", repr(answer(model, processor, image, question)))
        guarded = guard.wrap(model)  # the one changed line: same generate(**processor(...)) call
        print("guarded model:", repr(answer(guarded, processor, image, question)))

        # The guard's own API returns the verdict with the answer.
        result = guard.generate(image, question, max_new_tokens=8)
        print(f"guard.generate: action={result.action} rule={result.verdict.rule} generated={result.generated}")
        print(
            f"  text={result.text!r} prompt_tokens={result.prompt_tokens} completion_tokens={result.completion_tokens}"
        )

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
