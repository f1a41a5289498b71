"""PsaGuardMiddleware in a LangChain v1 agent: allowed, hinted, ended, raised and replaced model calls."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from pydantic import Field

from psaguard import GuardBlocked, InvalidInputError

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


class _ScriptedToolModel(BaseChatModel):
    """Answers with the scripted AI messages in turn and records what it was sent; tools bind to itself."""

    script: list[AIMessage]
    calls: list[list[BaseMessage]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Any, **kwargs: Any) -> _ScriptedToolModel:
        return self

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        self.calls.append(list(messages))
        return ChatResult(generations=[ChatGeneration(message=self.script[len(self.calls) - 1])])


@tool
def lookup(query: str) -> str:
    """Look something up."""
    return f"found {query}"


def test_agent_turns_with_v1_reasoning_and_tool_call_blocks_are_judged_or_passed_through(
    make_guard, image_message_content, monkeypatch
):
    call = {"type": "tool_call", "id": "call-1", "name": "lookup", "args": {"query": "cats"}}
    first = AIMessage(
        content=[
            {"type": "reasoning", "reasoning": "the user wants cats looked up"},
            {"type": "text", "text": "let me check"},
            call,
            {"type": "server_tool_call", "id": "srv-1", "name": "web_search", "args": {"q": "cats"}},
            {"type": "server_tool_result", "tool_call_id": "srv-1", "status": "success", "output": [{"url": "x"}]},
        ],
        tool_calls=[{"id": "call-1", "name": "lookup", "args": {"query": "cats"}}],
    )
    model = _ScriptedToolModel(script=[first, AIMessage(content="cats found")])
    guard = make_guard("allow")
    judged: list[str] = []
    classify = guard.classify_requests
    monkeypatch.setattr(
        guard,
        "classify_requests",
        lambda requests, **kw: (judged.extend(r.prompt for r in requests), classify(requests, **kw))[1],
    )
    agent = create_agent(model, tools=[lookup], middleware=[PsaGuardMiddleware(guard)])
    out = agent.invoke({"messages": [HumanMessage(content=image_message_content)]})
    assert out["messages"][-1].content == "cats found" and len(model.calls) == 2
    assert model.calls[1][1].content == first.content  # the AI turn reached the model unchanged
    assert "the user wants cats looked up" in judged[-1] and "let me check" in judged[-1]  # reasoning text is judged
    assert "found cats" in judged[-1]  # so is the tool's answer


@pytest.mark.parametrize(
    "block",
    [
        {"type": "non_standard", "value": {"content": [{"type": "image", "url": "data:image/png;base64,AAAA"}]}},
        {"type": "non_standard", "value": {"inline_data": {"mime_type": "image/png", "data": "AAAA"}}},
        {"type": "server_tool_result", "tool_call_id": "s", "status": "success", "output": "data:image/png;base64,AA"},
    ],
)
def test_pass_through_blocks_holding_media_are_refused(make_guard, image_message_content, block):
    model = _ScriptedToolModel(script=[AIMessage(content="never")])
    agent = create_agent(model, tools=[], middleware=[PsaGuardMiddleware(make_guard("allow"))])
    history = [HumanMessage(content=image_message_content), AIMessage(content=[block]), HumanMessage(content="and?")]
    with pytest.raises(InvalidInputError):
        agent.invoke({"messages": history})
    assert model.calls == []
