"""Training, evaluation and inference build the safety head's query with one function, on multi-turn rows too."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from psaguard import SafetyGuard
from psaguard.conversation import judged_text
from psaguard.training.collate import Collator
from psaguard.training.data import read_jsonl
from psaguard.training.evaluate import evaluate_guard

TURNS = [("<image>\nwhat is drawn here ?", "a red square"), ("and how do i make one ?", "with paint"), ("why ?", "no")]


def _spy_prompts(guard: SafetyGuard, seen: list[str]) -> None:
    """Record the prompts of every ``Classifier.analyze`` call (where generation and evaluation both judge)."""
    classifier = guard.classifier
    analyze = type(classifier).analyze

    def spy(images, prompts, *args, **kwargs):
        seen.extend(prompts)
        return analyze(classifier, images, prompts, *args, **kwargs)

    classifier.analyze = spy  # this test's own guard's classifier


def test_training_eval_and_inference_judge_the_same_text_on_multi_turn_rows(
    guard: SafetyGuard, tiny_processor, tmp_path: Path
) -> None:
    Image.new("RGB", (32, 32), "red").save(tmp_path / "a.png")
    turns = [
        {"from": role, "value": text}
        for user, answer in TURNS
        for role, text in (("USER", user), ("ASSISTANT", answer))
    ]
    row = {"image": "a.png", "conversations": turns, "safe_level": 2, "safe_type": "illegal"}
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
    examples, _ = read_jsonl(tmp_path / "rows.jsonl")

    # What an application sends for this request: the conversation up to the last answer.
    request = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is drawn here ?"}]}]
    request += [
        {"role": "assistant", "content": [{"type": "text", "text": "a red square"}]},
        {"role": "user", "content": [{"type": "text", "text": "and how do i make one ?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "with paint"}]},
        {"role": "user", "content": [{"type": "text", "text": "why ?"}]},
    ]
    inference: list[str] = []
    _spy_prompts(guard, inference)
    guard.generate(Image.open(tmp_path / "a.png"), request, max_new_tokens=1, do_sample=False)

    backbone = guard.backbone
    collate = Collator(
        tiny_processor, backbone.image_token_id, lambda images: backbone.preprocess(tiny_processor, images)
    )
    training = collate(examples).prompts

    evaluation: list[str] = []
    _spy_prompts(guard, evaluation)
    evaluate_guard(guard, examples)

    assert inference == training == evaluation == [judged_text(request)]
    assert "why ?" in training[0] and "what is drawn here ?" in training[0]  # not the first user turn alone
