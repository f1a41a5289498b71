"""GuardedChatModel: allowed, hinted, refused and blocked requests; streaming, async, stops and events."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from psaguard import GuardBlocked
from psaguard.adapters import VERDICT_EVENT, GuardedChatModel

MAX_TOKENS = 6


def _chat(guard, **fields) -> GuardedChatModel:
    return GuardedChatModel(guard=guard, **{"max_tokens": MAX_TOKENS, **fields})


def _messages(image_message_content) -> list:
    return [HumanMessage(content=image_message_content)]


def _joined(chunks) -> AIMessage:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


def test_allowed_answer_is_the_guarded_generation_of_the_same_request(make_guard, images, image_message_content):
    guard = make_guard("allow")
    reply = _chat(guard).invoke(_messages(image_message_content))
    direct = guard.generate(images[0], "what is in this picture ?", max_new_tokens=MAX_TOKENS, do_sample=False)
    assert reply.content == direct.text and reply.content
    meta = reply.response_metadata["psaguard"]
    assert meta["action"] == "allow" and meta["generated"] is True and meta["rule"] == "safe_type"
    assert reply.usage_metadata["input_tokens"] == direct.prompt_tokens
    assert reply.usage_metadata["output_tokens"] == direct.completion_tokens


def test_hinted_requests_are_answered_with_the_hint(make_guard, image_message_content):
    reply = _chat(make_guard("hint")).invoke(_messages(image_message_content))
    meta = reply.response_metadata["psaguard"]
    assert meta["action"] == "hint" and meta["generated"] is True
    assert meta["hint"].startswith("This image contains serious personal privacy")


def test_refused_requests_get_the_refusal_without_running_the_model(make_guard, image_message_content, monkeypatch):
    guard = make_guard("refuse")
    monkeypatch.setattr(guard.model, "generate", lambda *a, **k: pytest.fail("the model must not run"))
    reply = _chat(guard).invoke(_messages(image_message_content))
    assert "personal privacy" in reply.content
    assert reply.response_metadata["psaguard"]["generated"] is False
    assert reply.response_metadata["finish_reason"] == "content_filter"
    with pytest.raises(GuardBlocked):
        _chat(guard, on_block="error").invoke(_messages(image_message_content))


def test_refusals_answered_by_the_model_keep_its_answer(make_guard, image_message_content):
    from psaguard.policy import GenerationOptions

    chat = _chat(make_guard("refuse"), options=GenerationOptions(refuse_with="hint"))
    reply = chat.invoke(_messages(image_message_content))
    meta = reply.response_metadata["psaguard"]
    assert meta["action"] == "refuse" and meta["generated"] is True
    assert reply.usage_metadata["output_tokens"] > 0 and reply.response_metadata["finish_reason"] != "content_filter"
    streamed = _joined(list(chat.stream(_messages(image_message_content))))
    assert streamed.content.strip() == reply.content.strip()


def test_blocked_requests_raise_or_end_as_chosen(make_guard, image_message_content):
    guard = make_guard("block")
    with pytest.raises(GuardBlocked) as caught:
        _chat(guard).invoke(_messages(image_message_content))
    assert caught.value.verdict.rule == "type:privacy/level:reject"
    ended = _chat(guard, on_block="end").invoke(_messages(image_message_content))
    assert "personal privacy" in ended.content and ended.response_metadata["psaguard"]["action"] == "block"
    with pytest.raises(GuardBlocked):
        next(iter(_chat(guard).stream(_messages(image_message_content))))


def test_stream_equals_invoke_and_carries_the_verdict(make_guard, image_message_content):
    guard = make_guard("hint")
    chat = _chat(guard)
    reply = chat.invoke(_messages(image_message_content))
    chunks = list(chat.stream(_messages(image_message_content)))
    assert len(chunks) > 2
    assert chunks[0].response_metadata["psaguard"]["action"] == "hint"
    streamed = _joined(chunks)
    assert streamed.content.strip() == reply.content.strip()
    assert streamed.usage_metadata == reply.usage_metadata
    # streaming=True answers invoke() through the stream, with the same result.
    assert _chat(guard, streaming=True).invoke(_messages(image_message_content)).content.strip() == (
        reply.content.strip()
    )
    refused = list(_chat(make_guard("refuse")).stream(_messages(image_message_content)))
    assert "personal privacy" in _joined(refused).content


async def test_async_invoke_stream_and_batch_match_sync(make_guard, image_message_content):
    chat = _chat(make_guard("allow"))
    reply = chat.invoke(_messages(image_message_content))
    assert (await chat.ainvoke(_messages(image_message_content))).content == reply.content
    chunks = [c async for c in chat.astream(_messages(image_message_content))]
    assert _joined(chunks).content.strip() == reply.content.strip()
    batch = await chat.abatch([_messages(image_message_content), _messages(image_message_content)])
    assert [m.content for m in batch] == [reply.content] * 2
    refused = await _chat(make_guard("refuse")).ainvoke(_messages(image_message_content))
    assert refused.response_metadata["psaguard"]["action"] == "refuse"


def test_stop_sequences_cut_the_answer_in_invoke_and_stream(make_guard, image_message_content):
    chat = _chat(make_guard("allow"), max_tokens=12)
    full = chat.invoke(_messages(image_message_content)).content
    words = full.split()
    assert len(words) >= 3
    stop = words[2]
    expected = full[: full.find(stop)]
    cut = chat.invoke(_messages(image_message_content), stop=[stop])
    assert cut.content == expected and stop not in cut.content
    assert cut.usage_metadata["output_tokens"] < 12  # generation halted at the stop string
    streamed = _joined(list(chat.stream(_messages(image_message_content), stop=[stop])))
    assert streamed.content == expected


def test_text_only_requests_follow_on_text_only(make_guard):
    guard = make_guard("block")
    reply = _chat(guard).invoke("describe a red circle")
    meta = reply.response_metadata["psaguard"]
    assert meta["rule"] == "no_image" and meta["generated"] is True and reply.usage_metadata["output_tokens"] > 0
    assert _joined(list(_chat(guard).stream("describe a red circle"))).content.strip() == reply.content.strip()
    refused = _chat(guard, on_text_only="refuse").invoke("describe a red circle")
    assert refused.response_metadata["psaguard"]["action"] == "refuse" and refused.content.startswith("I'm sorry")


async def test_verdict_is_traced_as_event_and_in_stream_metadata(make_guard, image_message_content):
    from langchain_core.callbacks import AsyncCallbackHandler

    class EventLog(AsyncCallbackHandler):
        def __init__(self) -> None:
            self.events: list = []

        async def on_custom_event(self, name, data, **kwargs) -> None:
            self.events.append((name, data))

    log = EventLog()
    chat = _chat(make_guard("refuse"))
    await chat.ainvoke(_messages(image_message_content), config={"callbacks": [log]})
    chat.invoke(_messages(image_message_content), config={"callbacks": [log]})
    assert [(name, data["rule"]) for name, data in log.events] == [(VERDICT_EVENT, "type:privacy/level:reject")] * 2
    # Streaming runs get no run manager in _stream (LangChain dispatches chunk callbacks itself), so there
    # the verdict travels in the stream's response_metadata, which traces record.
    events = [e async for e in chat.astream_events(_messages(image_message_content), version="v2")]
    (end,) = [e for e in events if e["event"] == "on_chat_model_end"]
    assert end["data"]["output"].response_metadata["psaguard"]["rule"] == "type:privacy/level:reject"


def test_chat_model_and_guard_runnable_judge_a_conversation_alike(guard, image_message_content, saved_image):
    from psaguard.adapters import GuardRunnable

    conversation = [
        HumanMessage(content=image_message_content),
        AIMessage(content="a picture"),
        HumanMessage(content=[{"type": "image", "url": saved_image}, {"type": "text", "text": "and this one ?"}]),
    ]
    verdict = GuardRunnable(guard, on_text_only="allow").invoke(conversation)
    meta = _chat(guard, on_block="end", check_answers=False).invoke(conversation).response_metadata["psaguard"]
    assert meta["rule"] == verdict.rule and meta["action"] == verdict.action
    assert meta["verdict"]["level_probs"] == pytest.approx(verdict.level_probs, abs=1e-5)


def test_from_pretrained_loads_model_processor_and_saved_guard(make_guard, tiny_dir, tmp_path, image_message_content):
    saved = make_guard("refuse").save_pretrained(tmp_path / "guard")
    chat = GuardedChatModel.from_pretrained(tiny_dir, saved, max_tokens=MAX_TOKENS)
    reply = chat.invoke(_messages(image_message_content))
    assert reply.response_metadata["psaguard"]["rule"] == "type:privacy/level:reject"
    assert chat.guard.model is not None and chat.guard.model.training is False


@pytest.mark.gpu
def test_chat_model_runs_on_cuda(tiny_dir, image_message_content):
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from psaguard import SafetyGuard

    model = LlavaForConditionalGeneration.from_pretrained(tiny_dir).to("cuda").eval()
    chat = _chat(SafetyGuard.attach(model, AutoProcessor.from_pretrained(tiny_dir)), on_block="end")
    reply = chat.invoke(_messages(image_message_content))
    assert reply.response_metadata["psaguard"]["action"] in ("allow", "hint", "refuse", "block")
    text_only = chat.invoke("describe a red circle")
    assert text_only.response_metadata["psaguard"]["rule"] == "no_image"
    assert _joined(list(chat.stream("describe a red circle"))).content.strip() == text_only.content.strip()
    assert next(chat.guard.modules.parameters()).device.type == torch.device("cuda").type
