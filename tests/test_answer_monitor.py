"""AnswerMonitor: an answer arriving as text is judged every interval tokens and released a window behind."""

import pytest
from test_monitor import monitored_guard

from psaguard import GuardPolicy, InvalidImageError, ResponseHeadMissingError
from psaguard.request import GuardRequest

PROMPT = "what is in this image ?"
WORDS = "a red circle on a white background".split()


def _push_words(monitor) -> list[str]:
    return [monitor.push(word if i == 0 else " " + word) for i, word in enumerate(WORDS)]


def test_release_trails_the_last_judged_text_by_the_window(tiny_model, tiny_processor, images):
    guard = monitored_guard(tiny_model, tiny_processor, interval=3, window=2)
    monitor = guard.answer_monitor(GuardRequest.of([images[0]], PROMPT))
    released = _push_words(monitor)
    # Judged at 3 and 6 words (tokens of the tiny word-level tokenizer): released up to words 1 and 4.
    assert released == ["", "", "a", "", "", " red circle on", ""]
    assert monitor.judgements == 2 and monitor.verdict.tokens_judged == 6
    assert monitor.finish() == " a white background" and monitor.released == len(monitor.text)
    assert monitor.judgements == 3 and monitor.verdict.tokens_judged == 7 and not monitor.stopped
    same = guard.classify_response(images[0], PROMPT, " ".join(WORDS))  # the one response judgement
    assert (monitor.verdict.action, monitor.verdict.rule) == (same.action, same.rule)
    assert monitor.verdict.level_probs == pytest.approx(same.level_probs, abs=1e-5)


def test_a_flagged_answer_stops_and_releases_nothing_more(tiny_model, tiny_processor, images):
    guard = monitored_guard(tiny_model, tiny_processor, response_level=3, interval=2, window=0)
    monitor = guard.answer_monitor(GuardRequest.of([images[0], images[1]], PROMPT))
    assert _push_words(monitor) == [""] * len(WORDS)
    assert monitor.stopped and monitor.verdict.action == "replace" and monitor.verdict.tokens_judged == 2
    assert monitor.finish() == "" and monitor.released == 0 and monitor.judgements == 1


def test_a_whole_answer_is_judged_once(tiny_model, tiny_processor, images):
    guard = monitored_guard(tiny_model, tiny_processor, interval=2)
    monitor = guard.answer_monitor(GuardRequest.of([images[0]], PROMPT))
    verdict = monitor.judge(" ".join(WORDS))
    assert monitor.judgements == 1 and verdict.action == "allow" and monitor.released == len(monitor.text)


@pytest.mark.parametrize("on_error", ["block", "refuse", "allow"])
def test_an_answer_that_cannot_be_judged_follows_on_error(tiny_model, tiny_processor, on_error):
    guard = monitored_guard(tiny_model, tiny_processor, interval=2, window=0)
    guard = guard.with_policy(GuardPolicy(on_error=on_error, response=guard.policy.response))
    monitor = guard.answer_monitor(GuardRequest.of([b"not an image"], PROMPT))
    if on_error == "block":
        with pytest.raises(InvalidImageError):
            _push_words(monitor)
        return
    _push_words(monitor)
    monitor.finish()
    assert monitor.verdict.error and monitor.verdict.rule == "on_error"
    assert monitor.stopped == (on_error == "refuse")
    assert monitor.released == (0 if on_error == "refuse" else len(monitor.text))


def test_a_guard_without_a_response_head_cannot_monitor(tiny_model, tiny_processor, images):
    guard = monitored_guard(tiny_model, tiny_processor, response_head=False)
    with pytest.raises(ResponseHeadMissingError):
        guard.answer_monitor(GuardRequest.of([images[0]], PROMPT))
