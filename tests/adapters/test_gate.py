"""guarded(): risky requests never reach the wrapped model; refusal, raise, replace and hint exits."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from psaguard import GuardBlocked
from psaguard.adapters import guarded


def _request(content) -> list:
    return [SystemMessage(content="you are a helpful assistant"), HumanMessage(content=content)]


def _has_image(message) -> bool:
    return not isinstance(message.content, str) and any(b.get("type") == "image_url" for b in message.content)


def test_allowed_requests_reach_the_model_unchanged(make_guard, recorder, image_message_content):
    messages = _request(image_message_content)
    answer = guarded(recorder, make_guard("allow")).invoke(messages)
    assert answer.content == "answer"
    assert recorder.calls == [messages]


def test_hint_is_prepended_to_the_system_message(make_guard, recorder, image_message_content):
    guard = make_guard("hint")
    guarded(recorder, guard).invoke(_request(image_message_content))
    guarded(recorder, guard).invoke([HumanMessage(content=image_message_content)])
    with_system, without_system = recorder.calls
    assert isinstance(with_system[0], SystemMessage)
    assert with_system[0].content.startswith("This image contains serious personal privacy")
    assert with_system[0].content.endswith("you are a helpful assistant")
    assert isinstance(without_system[0], SystemMessage) and "personal privacy" in without_system[0].content
    assert _has_image(with_system[1]) and _has_image(without_system[1])


def test_refused_requests_end_with_a_refusal_and_never_reach_the_model(make_guard, recorder, image_message_content):
    answer = guarded(recorder, make_guard("refuse")).invoke(_request(image_message_content))
    assert isinstance(answer, AIMessage)
    assert "personal privacy" in answer.content
    assert answer.response_metadata["psaguard"]["action"] == "refuse"
    assert answer.response_metadata["psaguard"]["rule"] == "type:privacy/level:reject"
    assert recorder.calls == []


def test_blocked_requests_raise_with_the_verdict(make_guard, recorder, image_message_content):
    with pytest.raises(GuardBlocked) as caught:
        guarded(recorder, make_guard("block")).invoke(_request(image_message_content))
    assert caught.value.verdict.action == "block"
    assert recorder.calls == []


def test_on_block_overrides_the_policy_exit(make_guard, recorder, image_message_content):
    refuse, block = make_guard("refuse"), make_guard("block")
    with pytest.raises(GuardBlocked):
        guarded(recorder, refuse, on_block="error").invoke(_request(image_message_content))
    ended = guarded(recorder, block, on_block="end").invoke(_request(image_message_content))
    assert ended.response_metadata["psaguard"]["action"] == "block" and recorder.calls == []

    answer = guarded(recorder, refuse, on_block="replace").invoke(_request(image_message_content))
    assert answer.content == "answer"
    (seen,) = recorder.calls
    assert seen[0].content == "you are a helpful assistant"
    assert "personal privacy" in seen[1].content and not _has_image(seen[1])


def test_batch_sends_only_allowed_requests_to_the_model_in_one_batch(
    make_guard, recorder, image_message_content, images, monkeypatch
):
    guard = make_guard("refuse")
    runnable = guarded(recorder, guard)
    batch_sizes: list[int] = []
    original = recorder.batch
    monkeypatch.setattr(
        type(recorder),
        "batch",
        lambda self, inputs, *a, **k: batch_sizes.append(len(inputs)) or original(inputs, *a, **k),
    )
    results = runnable.batch(["plain text question", _request(image_message_content), "another text"])
    assert [r.content for r in results][::2] == ["answer", "answer"]
    assert "personal privacy" in results[1].content
    assert batch_sizes == [2] and len(recorder.calls) == 2


def test_stream_yields_nothing_from_the_model_for_refused_requests(make_guard, recorder, image_message_content):
    allowed = list(guarded(recorder, make_guard("allow")).stream(_request(image_message_content)))
    # Chat models end a stream with an empty closing chunk.
    assert [c.content for c in allowed if c.content] == ["ans", "wer"]
    refused = list(guarded(recorder, make_guard("refuse")).stream(_request(image_message_content)))
    assert len(refused) == 1 and "personal privacy" in refused[0].content
    assert len(recorder.calls) == 1


async def test_async_paths_match_the_sync_ones(make_guard, recorder, image_message_content):
    hinted = guarded(recorder, make_guard("hint"))
    assert (await hinted.ainvoke(_request(image_message_content))).content == "answer"
    assert "personal privacy" in recorder.calls[-1][0].content
    chunks = [c.content async for c in hinted.astream(_request(image_message_content))]
    assert [c for c in chunks if c] == ["ans", "wer"]
    refused = guarded(recorder, make_guard("refuse"))
    results = await refused.abatch([_request(image_message_content), "text only"])
    assert "personal privacy" in results[0].content and results[1].content == "answer"
    refusal = [c.content async for c in refused.astream(_request(image_message_content))]
    assert len(refusal) == 1 and refusal[0].startswith("I'm sorry")
    with pytest.raises(GuardBlocked):
        await guarded(recorder, make_guard("block")).ainvoke(_request(image_message_content))


def test_lcel_chain_with_an_image_prompt_template(make_guard, recorder, png_b64):
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "answer briefly"),
            ("user", [{"type": "image_url", "image_url": {"url": "{image_url}"}}, {"type": "text", "text": "{q}"}]),
        ]
    )
    chain = prompt | guarded(recorder, make_guard("hint")) | StrOutputParser()
    assert chain.invoke({"image_url": f"data:image/png;base64,{png_b64}", "q": "what is it ?"}) == "answer"
    system = recorder.calls[0][0]
    assert system.content.startswith("This image contains serious") and system.content.endswith("answer briefly")


def test_dict_inputs_get_the_hint_in_the_prompt(make_guard, images):
    seen = []
    from langchain_core.runnables import RunnableLambda

    echo = RunnableLambda(lambda value: seen.append(value) or "ok")
    assert guarded(echo, make_guard("hint")).invoke({"image": images[0], "prompt": "describe"}) == "ok"
    assert seen[0]["prompt"].startswith("This image contains serious") and seen[0]["prompt"].endswith("describe")


def test_the_old_name_of_the_gate_still_works_and_says_it_is_deprecated():
    import psaguard.adapters as adapters
    from psaguard.adapters import GuardGate

    with pytest.warns(DeprecationWarning, match="GuardGate"):
        assert adapters.GuardedRunnable is GuardGate
    assert "GuardedRunnable" not in adapters.__all__
