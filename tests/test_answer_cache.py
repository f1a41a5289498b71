"""The incremental response head (the streaming monitor's): the same verdicts as judging the whole text afresh."""

import random
import unicodedata

import pytest
import torch
from generation_helpers import QUESTION

from psaguard import GuardPolicy, HeadConfig, ResponsePolicy, SafetyGuard, SafetyGuardConfig
from psaguard.prompts import clean_prompt

ALLOW = {1: "allow", 2: "allow", 3: "allow"}
WORDS = "sorry , i cannot help with that . a red circle on a white background describe the picture".split()


def random_guard(tiny_model, tiny_processor, max_prompt_tokens: int = 64, **response) -> SafetyGuard:
    """A guard with random heads (probabilities spread out) that allows everything, so nothing stops."""
    torch.manual_seed(1)
    config = SafetyGuardConfig(
        head=HeadConfig(response_head=True, max_prompt_tokens=max_prompt_tokens),
        policy=GuardPolicy(level_actions=ALLOW, response=ResponsePolicy(level_actions=ALLOW, **response)),
    )
    return SafetyGuard.attach(tiny_model, tiny_processor, config)


def assert_same(got, want):
    for a, b in zip(got, want, strict=True):
        assert a.level_probs == pytest.approx(b.level_probs, abs=1e-5)
        assert a.type_probs == pytest.approx(b.type_probs, abs=1e-5)
        assert (a.level, a.type, a.action) == (b.level, b.type, b.action)


def test_incremental_judgements_equal_whole_ones_as_answers_grow_past_truncation(tiny_model, tiny_processor, images):
    # A 16-token query: the answers soon outgrow it, so its kept tail slides at every judgement.
    guard = random_guard(tiny_model, tiny_processor, max_prompt_tokens=16)
    classifier = guard.classifier
    prompts = [QUESTION, "describe the picture"]
    features = classifier.backbone.encode_images(**classifier.preprocess(images[:2]))
    whole = classifier.responses.request_context(features, prompts, 0.0)
    growing = classifier.responses.request_context(features, prompts, 0.0, incremental=True)
    assert whole.answers is None and growing.answers is not None
    rng = random.Random(0)
    words: list[list[str]] = [[], []]
    for step in range(30):
        for answer in words:
            answer.extend(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
        texts = [" ".join(answer) for answer in words]
        rows = [0, 1] if step % 3 else [1]  # both rows in one batch, or one alone
        texts = texts if step % 3 else texts[1:]
        judge = classifier.responses.judge_responses
        assert_same(judge(growing, texts, 0.0, rows), judge(whole, texts, 0.0, rows))


def test_every_judgement_of_the_monitor_equals_classify_response_of_its_text(tiny_model, tiny_processor, images):
    guard = random_guard(tiny_model, tiny_processor, interval=1, window=1)
    classifier = guard.classifier
    original = classifier.responses.judge_responses
    judged: list[tuple[str, object]] = []

    def recording(context, responses, start, rows=None, tokens_judged=None):
        verdicts = original(context, responses, start, rows, tokens_judged)
        judged.extend(zip(responses, verdicts))
        return verdicts

    classifier.responses.judge_responses = recording
    result = guard.generate(images[0], QUESTION, max_new_tokens=20, min_new_tokens=20, do_sample=False)
    del classifier.responses.judge_responses
    assert result.completion_tokens == 20 and len(judged) >= 20  # judged at every token, then at the end
    fresh = guard.classify_response_batch([images[0]] * len(judged), [QUESTION] * len(judged), [t for t, _ in judged])
    assert_same([verdict for _, verdict in judged], fresh)


def _reference_clean(prompt: str) -> str:
    """clean_prompt's rule, spelled out character by character (what the ASCII fast path must equal)."""
    text = unicodedata.normalize("NFKC", "".join(ch for ch in prompt if not 0xD800 <= ord(ch) <= 0xDFFF))
    kept = "".join(ch for ch in text if ch.isspace() or unicodedata.category(ch) not in {"Cc", "Cf", "Cs", "Co", "Cn"})
    return " ".join(kept.split())


def test_clean_prompt_ascii_fast_path_equals_the_rule():
    rng = random.Random(0)
    ascii_chars = [chr(code) for code in range(128)]
    samples = ["".join(ascii_chars), " \t\x00a\x1fb\x7f\x1c c \x0b", "plain words , no controls ."]
    samples += ["".join(rng.choice(ascii_chars) for _ in range(rng.randint(0, 60))) for _ in range(300)]
    for sample in samples:
        assert sample.isascii() and clean_prompt(sample) == _reference_clean(sample)
    assert clean_prompt("b\u200bomb \uff21") == _reference_clean("b\u200bomb \uff21") == "bomb A"  # the slow path
