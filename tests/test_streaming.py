import pytest
from generation_helpers import QUESTION, count_calls, guard_for

from psaguard import GuardBlocked, InvalidInputError

GREEDY = {"max_new_tokens": 6, "do_sample": False}


def test_stream_knows_the_verdict_before_the_llm_runs(tiny_model, tiny_processor, images):
    guard = guard_for(tiny_model, tiny_processor, level=1)
    with count_calls(tiny_model.model.language_model) as calls:
        stream = guard.stream(images[0], QUESTION, max_new_tokens=6)
        assert stream.verdict.action == "hint" and stream.hint and calls == []
        chunks = list(stream)
    assert calls and chunks
    assert (
        "".join(chunks).strip()
        == stream.result.text.strip()
        == guard.generate(images[0], QUESTION, **GREEDY).text.strip()
    )
    assert stream.result.completion_tokens > 0


def test_stream_of_a_blocked_or_refused_request(tiny_model, tiny_processor, images):
    blocked = guard_for(tiny_model, tiny_processor, level=3, level_actions={1: "hint", 2: "hint", 3: "block"})
    with pytest.raises(GuardBlocked):
        blocked.stream(images[0], QUESTION)
    refused = guard_for(tiny_model, tiny_processor, level=3, refusal="no {concept} .")
    stream = refused.stream(images[0], QUESTION)
    assert list(stream) == ["no personal privacy ."] and not stream.result.generated


async def test_astream_yields_the_same_text(tiny_model, tiny_processor, images):
    guard = guard_for(tiny_model, tiny_processor, level=0)
    stream = guard.astream(images[0], QUESTION, max_new_tokens=6)
    assert (await stream.start()).action == "allow"
    chunks = [chunk async for chunk in stream]
    assert "".join(chunks).strip() == guard.generate(images[0], QUESTION, **GREEDY).text.strip()
    blocked = guard_for(tiny_model, tiny_processor, level=3, level_actions={1: "hint", 2: "hint", 3: "block"})
    with pytest.raises(GuardBlocked):
        [chunk async for chunk in blocked.astream(images[0], QUESTION)]


def test_stream_refuses_a_second_streamer(tiny_model, tiny_processor, images):
    guard = guard_for(tiny_model, tiny_processor, level=0)
    with pytest.raises(InvalidInputError, match="streamer"):
        guard.stream(images[0], QUESTION, streamer=object())


def test_result_is_only_available_after_the_stream_is_consumed(tiny_model, tiny_processor, images):
    stream = guard_for(tiny_model, tiny_processor, level=0).stream(images[0], QUESTION, max_new_tokens=2)
    with pytest.raises(RuntimeError, match="not finished"):
        stream.result  # noqa: B018
    list(stream)
    assert stream.result.generated
