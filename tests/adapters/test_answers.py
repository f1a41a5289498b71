"""The adapters judge the wrapped model's answer: guarded() (invoke, batch, stream, astream), the agent
middleware, and GuardedChatModel's stream through the guard's monitor."""

from __future__ import annotations

from typing import Any

import pytest
from generation_helpers import flag_judgements
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import RunnableLambda

from psaguard import (
    ConfigError,
    GuardPolicy,
    InvalidInputError,
    ResponseBlocked,
    ResponseHeadMissingError,
    ResponsePolicy,
    SafetyGuard,
)
from psaguard.adapters import VERDICT_EVENT, GuardedChatModel, guarded

ANSWER = "a red circle on a white background then mix the bleach with the acid and breathe"
SAFE = "a red circle on a white background"
WORD = "bleach"  # the answers holding it are flagged


def with_response(guard: SafetyGuard, **response: Any) -> SafetyGuard:
    """``guard`` with another response policy (monitor interval, window, actions)."""
    return guard.with_policy(guard.policy.model_copy(update={"response": ResponsePolicy(**response)}))


def word_guard(make_guard, **response: Any) -> tuple[SafetyGuard, list[str]]:
    """A guard allowing every request, flagging the answers that hold WORD (judged every 2 tokens, 1 held)."""
    guard = with_response(make_guard("allow"), **{"interval": 2, "window": 1, **response})
    return guard, flag_judgements(guard, lambda _, text: WORD in text)


def fake_model(answer: str = ANSWER) -> GenericFakeChatModel:
    """A chat model streaming ``answer`` word by word (words and spaces as chunks)."""
    return GenericFakeChatModel(messages=iter([AIMessage(content=answer, id="run-1")]))


class Events(BaseCallbackHandler):
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        if name == VERDICT_EVENT:
            self.seen.append(data)


def _request(image_message_content) -> list:
    return [HumanMessage(content=image_message_content)]


# ---------------------------------------------------------------------------------------------- invoke
def test_a_safe_answer_passes_unchanged_and_its_verdict_is_sent(make_guard, image_message_content):
    guard, judged = word_guard(make_guard)
    events = Events()
    reply = guarded(fake_model(SAFE), guard).invoke(_request(image_message_content), {"callbacks": [events]})
    assert reply.content == SAFE and reply.id == "run-1" and "psaguard_response" not in reply.response_metadata
    assert judged == [SAFE]  # judged once, whole
    assert [e["side"] for e in events.seen] == ["request", "response"]
    assert events.seen[1]["action"] == "allow" and events.seen[1]["tokens_judged"] == len(SAFE.split())


@pytest.mark.parametrize("on_block", [None, "end", "replace", "error"])
def test_a_flagged_answer_takes_the_exit(make_guard, image_message_content, on_block):
    guard, _ = word_guard(make_guard)
    gate = guarded(fake_model(), guard, on_block=on_block)
    if on_block == "error":
        with pytest.raises(ResponseBlocked) as raised:
            gate.invoke(_request(image_message_content))
        assert raised.value.verdict.type.code == "privacy"
        return
    reply = gate.invoke(_request(image_message_content))
    meta = reply.response_metadata["psaguard_response"]
    assert meta["side"] == "response" and meta["action"] == "replace" and meta["type"] == "privacy"
    assert reply.content == meta["verdict"]["replacement"] and "personal privacy" in reply.content
    assert WORD not in reply.content and not reply.tool_calls
    assert (reply.id == "run-1") == (on_block != "end")  # 'replace' keeps the model's message, 'end' is a new one


def test_a_block_action_raises_by_default_and_replace_fits_a_string_chain(make_guard, image_message_content):
    guard, _ = word_guard(make_guard, level_actions={3: "block"})
    with pytest.raises(ResponseBlocked):
        guarded(fake_model(), guard).invoke(_request(image_message_content))
    # Under 'replace' a chain returning strings gets the replacement as a string.
    replaced = guarded(fake_model() | StrOutputParser(), guard, on_block="replace").invoke(
        _request(image_message_content)
    )
    assert isinstance(replaced, str) and "personal privacy" in replaced and WORD not in replaced


def test_the_trained_response_head_judges_the_hosted_answer(make_guard, images):
    from test_responses import HARMFUL, HARMLESS, PROMPT, train_response_head

    guard = make_guard("allow")
    train_response_head(guard, images[0])
    request = {"image": images[0], "prompt": PROMPT}
    assert guarded(RunnableLambda(lambda _: HARMLESS), guard).invoke(request) == HARMLESS
    replaced = guarded(RunnableLambda(lambda _: HARMFUL), guard).invoke(request)
    assert isinstance(replaced, str) and replaced == guard.classify_response(images[0], PROMPT, HARMFUL).replacement


def test_batches_judge_each_answer(make_guard, image_message_content):
    guard, _ = word_guard(make_guard)
    model = RunnableLambda(lambda messages: AIMessage(content=ANSWER if "risky" in messages[-1].text else SAFE))
    risky = [HumanMessage(content=[*image_message_content, {"type": "text", "text": "risky"}])]
    safe, flagged = guarded(model, guard).batch([_request(image_message_content), risky])
    assert safe.content == SAFE and "personal privacy" in flagged.content
    gate = guarded(model, guard, on_block="error")
    results = gate.batch([_request(image_message_content), risky], return_exceptions=True)
    assert results[0].content == SAFE and isinstance(results[1], ResponseBlocked)


def test_answers_to_text_only_requests_and_non_text_outputs(make_guard, image_message_content):
    guard, judged = word_guard(make_guard)
    # No image: the request is let through (on_text_only='allow') and its answer cannot be judged either.
    assert guarded(fake_model(), guard).invoke("hello").content == ANSWER and judged == []
    with pytest.raises(InvalidInputError, match="check_answers=False"):
        guarded(RunnableLambda(lambda _: {"answer": ANSWER}), guard).invoke(_request(image_message_content))


# ---------------------------------------------------------------------------------------------- streams
def _released_before_stop(judged: list[str], window: int) -> str:
    """What may be out before the stop: the last answer judged safe, less its last ``window`` words."""
    last_safe = [text for text in judged if WORD not in text][-1]
    return " ".join(last_safe.split()[:-window])


async def _collect(gate, value, astream: bool, config: Any = None) -> tuple[list[Any], BaseException | None]:
    chunks: list[Any] = []
    try:
        if astream:
            async for chunk in gate.astream(value, config):
                chunks.append(chunk)
        else:
            for chunk in gate.stream(value, config):
                chunks.append(chunk)
    except ResponseBlocked as err:
        return chunks, err
    return chunks, None


@pytest.mark.parametrize("astream", [False, True])
async def test_a_safe_stream_comes_out_whole_in_several_chunks(make_guard, image_message_content, astream):
    guard, judged = word_guard(make_guard)
    events = Events()
    gate = guarded(fake_model(SAFE), guard)
    chunks, _ = await _collect(gate, _request(image_message_content), astream, {"callbacks": [events]})
    assert "".join(c.content for c in chunks) == SAFE and len(chunks) > 2
    assert judged[-1] == SAFE  # the final judgement covers the whole answer
    assert [(e["side"], e["action"]) for e in events.seen] == [("request", "allow"), ("response", "allow")]


@pytest.mark.parametrize("astream", [False, True])
@pytest.mark.parametrize("on_block", [None, "end", "error"])
async def test_a_flagged_stream_stops_with_nothing_past_the_judged_part(
    make_guard, image_message_content, astream, on_block
):
    guard, judged = word_guard(make_guard)
    gate = guarded(fake_model(), guard, on_block=on_block)
    chunks, error = await _collect(gate, _request(image_message_content), astream)
    released = chunks if on_block == "error" else chunks[:-1]
    text = "".join(c.content for c in released)
    assert text == _released_before_stop(judged, window=1) and WORD not in text
    assert len(released) > 2  # it did stream before the stop
    assert WORD in judged[-1] and not any(WORD in t for t in judged[:-1])  # stopped at the first flag
    if on_block == "error":
        assert isinstance(error, ResponseBlocked)
        return
    last = chunks[-1]
    assert isinstance(last, AIMessageChunk) and "personal privacy" in last.content
    assert last.response_metadata["psaguard_response"]["side"] == "response"
    assert last.response_metadata["psaguard_response"]["released_chars"] == len(text)


@pytest.mark.parametrize("astream", [False, True])
async def test_a_string_stream_under_replace_ends_with_the_replacement_string(
    make_guard, image_message_content, astream
):
    guard, judged = word_guard(make_guard)
    gate = guarded(fake_model() | StrOutputParser(), guard, on_block="replace")
    chunks, _ = await _collect(gate, _request(image_message_content), astream)
    assert all(isinstance(c, str) for c in chunks) and "personal privacy" in chunks[-1]
    assert "".join(chunks[:-1]) == _released_before_stop(judged, window=1)


@pytest.mark.parametrize("astream", [False, True])
async def test_the_end_of_the_stream_is_judged_before_the_tail_is_released(make_guard, image_message_content, astream):
    words = [*SAFE.split(), "and", "more", "words", "then", "bleach"]  # 12 words, WORD last
    guard, judged = word_guard(make_guard, interval=4, window=2)
    chunks, _ = await _collect(guarded(fake_model(" ".join(words)), guard), _request(image_message_content), astream)
    # Judged safe at 4 and 8 words (released up to 6), then at 12 words: flagged; 7 to 11 never come out.
    assert [len(t.split()) for t in judged] == [4, 8, 12]
    assert "".join(c.content for c in chunks[:-1]) == " ".join(words[:6])
    assert "personal privacy" in chunks[-1].content


@pytest.mark.parametrize("astream", [False, True])
async def test_a_stream_judged_only_at_its_end(make_guard, image_message_content, astream):
    guard, judged = word_guard(make_guard, interval=100)
    gate = guarded(fake_model(), guard)
    chunks, _ = await _collect(gate, _request(image_message_content), astream)
    assert judged == [ANSWER] and len(chunks) == 1 and "personal privacy" in chunks[0].content


# ---------------------------------------------------------------------------------------------- agents
def _agent(guard, answer: str = ANSWER, **options):
    from langchain.agents import create_agent

    from psaguard.adapters import PsaGuardMiddleware

    return create_agent(fake_model(answer), tools=[], middleware=[PsaGuardMiddleware(guard, **options)])


@pytest.mark.parametrize("on_block", [None, "end", "replace", "error"])
async def test_the_middleware_judges_the_agent_model_answer(make_guard, image_message_content, on_block):
    pytest.importorskip("langchain.agents")
    guard, _ = word_guard(make_guard)
    turn = {"messages": _request(image_message_content)}
    assert _agent(guard, SAFE, on_block=on_block).invoke(turn)["messages"][-1].content == SAFE
    for run in ("invoke", "ainvoke"):
        agent = _agent(guard, on_block=on_block)
        if on_block == "error":
            with pytest.raises(ResponseBlocked):
                await agent.ainvoke(turn) if run == "ainvoke" else agent.invoke(turn)
            continue
        events = Events()
        config = {"callbacks": [events]}
        out = await agent.ainvoke(turn, config) if run == "ainvoke" else agent.invoke(turn, config)
        assert [(e["side"], e["action"]) for e in events.seen] == [("request", "allow"), ("response", "replace")]
        last = out["messages"][-1]
        assert "personal privacy" in last.content and WORD not in last.content and not last.tool_calls
        assert last.response_metadata["psaguard_response"]["side"] == "response"


# ---------------------------------------------------------------------------------------------- no response head
def test_a_guard_without_a_response_head_fails_closed_unless_told(guard, image_message_content):
    pytest.importorskip("langchain.agents")
    from psaguard.adapters import PsaGuardMiddleware

    assert not guard.has_response_head
    with pytest.raises(ResponseHeadMissingError):
        guarded(fake_model(), guard)
    with pytest.raises(ResponseHeadMissingError):
        PsaGuardMiddleware(guard)
    with pytest.raises(ResponseHeadMissingError):
        GuardedChatModel(guard=guard)
    lenient = guard.with_policy(GuardPolicy(level_actions={1: "allow", 2: "allow", 3: "allow"}))
    request = _request(image_message_content)
    assert guarded(fake_model(), lenient, check_answers=False).invoke(request).content == ANSWER  # unchecked
    PsaGuardMiddleware(guard, check_answers=False)
    GuardedChatModel(guard=guard, check_answers=False)


# ---------------------------------------------------------------------------------------------- GuardedChatModel
def test_guarded_chat_model_streams_through_the_monitor(make_guard, image_message_content):
    guard = with_response(make_guard("allow"), interval=2, window=1)
    kwargs = {"max_tokens": 12, "generate_kwargs": {"min_new_tokens": 12}}
    whole = GuardedChatModel(guard=guard, check_answers=False, **kwargs).invoke(_request(image_message_content))
    judged = flag_judgements(guard, lambda call, _: call >= 3)  # judgements 1 and 2 (2 and 4 tokens) pass
    chat = GuardedChatModel(guard=guard, **kwargs)
    chunks = list(chat.stream(_request(image_message_content)))
    stop = next(i for i, c in enumerate(chunks) if "personal privacy" in c.content)
    released = "".join(c.content for c in chunks[:stop])
    # Judged at 2, 4 (safe) and 6 tokens (flagged): out before the stop is the text judged safe at 4 tokens less
    # its 1-token window, never the flagged judgement's text (exact token positions: tests/test_monitor.py).
    assert len(judged) == 3 and whole.content.startswith(judged[2]) and judged[2].startswith(judged[1])
    assert released and judged[1].startswith(released) and len(released) < len(judged[1])
    assert (
        chunks[stop].content == chunks[stop].content.lstrip() and "".join(c.content for c in chunks[stop + 1 :]) == ""
    )
    meta = chunks[-1].response_metadata
    assert meta["finish_reason"] == "content_filter"
    assert meta["psaguard_response"]["action"] == "replace" and meta["psaguard_response"]["tokens_judged"] == 6


def test_guarded_chat_model_check_answers_false_turns_the_monitor_off(make_guard, image_message_content):
    guard = with_response(make_guard("allow"), interval=2, window=1)
    checked = GuardedChatModel(guard=guard, max_tokens=6).invoke(_request(image_message_content))
    assert checked.response_metadata["psaguard_response"]["action"] == "allow"  # the monitor judged it
    reply = GuardedChatModel(guard=guard, max_tokens=6, check_answers=False).invoke(_request(image_message_content))
    assert "psaguard_response" not in reply.response_metadata and reply.content == checked.content
    assert reply.response_metadata["finish_reason"] != "content_filter"
    with pytest.raises(ConfigError, match="monitor"):  # answers asked to be checked, the policy switches it off
        GuardedChatModel(guard=with_response(guard, monitor=False))
