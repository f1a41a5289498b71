"""LangChain apps switch to psaguard by base URL: ``ChatOpenAI`` and ``OpenAIModerationMiddleware`` against it."""

from __future__ import annotations

import pytest
from langchain.agents import create_agent
from langchain_core.output_parsers import StrOutputParser
from langchain_openai import ChatOpenAI
from langchain_openai.middleware import OpenAIModerationMiddleware
from openai import OpenAI
from serving_helpers import image_message

from psaguard.serving import BackgroundServer, ServeConfig, create_app

MAX_TOKENS = 8


def chat_model(server) -> ChatOpenAI:
    return ChatOpenAI(base_url=server.base_url, api_key="unused", model="demo", max_tokens=MAX_TOKENS, max_retries=0)


@pytest.mark.parametrize("kind", ["benign", "harmful"])
def test_chat_openai_chain_gets_the_guarded_answer(local_server, local_guard, requests_by_kind, kind):
    image, prompt = requests_by_kind[kind]
    expected = local_guard.generate([image], prompt, max_new_tokens=MAX_TOKENS, do_sample=False)
    message = chat_model(local_server).invoke([image_message(image, prompt)])
    assert message.content == expected.text
    assert (message.response_metadata["finish_reason"] == "content_filter") == (expected.action == "refuse")
    chain = chat_model(local_server) | StrOutputParser()
    assert "".join(chain.stream([image_message(image, prompt)])).strip() == expected.text.strip()


def moderated_agent(server):
    moderation = OpenAIModerationMiddleware(client=OpenAI(base_url=server.base_url, api_key="unused", max_retries=0))
    return create_agent(model=chat_model(server), tools=[], middleware=[moderation])


def test_moderation_middleware_ends_a_run_psaguard_flags(local_guard):
    with BackgroundServer(create_app(local_guard, ServeConfig(on_text_only="refuse"))) as server:
        messages = moderated_agent(server).invoke({"messages": [{"role": "user", "content": "hello"}]})["messages"]
    assert len(messages) == 2  # the user's message and the violation notice: the model never ran
    assert "flagged" in messages[-1].content


def test_moderation_middleware_lets_unflagged_runs_reach_the_model(local_server):
    messages = moderated_agent(local_server).invoke({"messages": [{"role": "user", "content": "hello"}]})["messages"]
    assert messages[-1].type == "ai" and "flagged" not in messages[-1].content
    assert messages[-1].response_metadata["model_name"] == "demo"  # answered by the server's model
