"""PsaGuardMiddleware in a LangChain v1 agent: allowed, hinted, ended, raised and replaced model calls."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from psaguard import GuardBlocked

pytest.importorskip("langchain.agents", reason="the agent middleware needs the langchain v1 package")

from langchain.agents import create_agent

from psaguard.adapters import VERDICT_EVENT, PsaGuardMiddleware


def _agent(recorder, guard, **options):
    middleware = PsaGuardMiddleware(guard, **options)
    return create_agent(recorder, tools=[], system_prompt="be concise", middleware=[middleware])


def test_allowed_turns_reach_the_model(make_guard, recorder, image_message_content):
    out = _agent(recorder, make_guard("allow")).invoke({"messages": [HumanMessage(content=image_message_content)]})
    assert out["messages"][-1].content == "answer"
    (seen,) = recorder.calls
    assert seen[0] == SystemMessage(content="be concise") and seen[1].content == image_message_content


def test_hint_goes_in_front_of_the_agent_system_prompt(make_guard, recorder, image_message_content):
    _agent(recorder, make_guard("hint")).invoke({"messages": [HumanMessage(content=image_message_content)]})
    system = recorder.calls[0][0]
    assert system.content.startswith("This image contains serious personal privacy")
    assert system.content.endswith("be concise")


def test_refused_turns_end_the_agent_without_a_model_call(make_guard, recorder, image_message_content):
    out = _agent(recorder, make_guard("refuse")).invoke({"messages": [HumanMessage(content=image_message_content)]})
    last = out["messages"][-1]
    assert isinstance(last, AIMessage) and "personal privacy" in last.content
    assert last.response_metadata["psaguard"]["rule"] == "type:privacy/level:reject"
    assert recorder.calls == []


def test_error_and_replace_exits(make_guard, recorder, image_message_content):
    request = {"messages": [HumanMessage(content=image_message_content)]}
    with pytest.raises(GuardBlocked):
        _agent(recorder, make_guard("block")).invoke(request)
    assert recorder.calls == []
    out = _agent(recorder, make_guard("block"), on_block="replace").invoke(request)
    assert out["messages"][-1].content == "answer"
    sent = recorder.calls[0][1]
    assert isinstance(sent.content, str) and "personal privacy" in sent.content
    # The state keeps what the user sent; only the model request was replaced.
    assert out["messages"][0].content == image_message_content


async def test_async_agent_emits_the_verdict_event(make_guard, recorder, image_message_content):
    agent = _agent(recorder, make_guard("refuse"))
    events = [
        e
        async for e in agent.astream_events({"messages": [HumanMessage(content=image_message_content)]}, version="v2")
        if e["event"] == "on_custom_event"
    ]
    assert [e["name"] for e in events] == [VERDICT_EVENT]
    assert events[0]["data"]["action"] == "refuse"
    out = await agent.ainvoke({"messages": [HumanMessage(content=image_message_content)]})
    assert "personal privacy" in out["messages"][-1].content and recorder.calls == []
