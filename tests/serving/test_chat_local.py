"""Local-mode ``/v1/chat/completions`` through the openai client: guarded generation, streamed or not."""

from __future__ import annotations

import openai
import pytest
from serving_helpers import image_message, openai_client

from psaguard.policy import GuardPolicy
from psaguard.serving import BackgroundServer, ServeConfig, create_app

MAX_TOKENS = 12


def chat(server, image, prompt, **kwargs):
    return openai_client(server).chat.completions.with_raw_response.create(
        model="demo", messages=[image_message(image, prompt)], max_tokens=MAX_TOKENS, **kwargs
    )


@pytest.mark.parametrize("kind", ["benign", "image_risk", "harmful"])
def test_completion_is_the_guards_generation_with_its_verdict(local_server, local_guard, requests_by_kind, kind):
    image, prompt = requests_by_kind[kind]
    expected = local_guard.generate([image], prompt, max_new_tokens=MAX_TOKENS, do_sample=False)
    raw = chat(local_server, image, prompt)
    answer = raw.parse()
    assert answer.choices[0].message.content == expected.text
    assert answer.psaguard["action"] == expected.action == raw.headers["x-psaguard-action"]
    assert raw.headers["x-psaguard-rule"] == expected.verdict.rule
    finish = answer.choices[0].finish_reason
    assert finish == (
        "content_filter"
        if expected.action == "refuse"
        else "length"
        if expected.completion_tokens >= MAX_TOKENS
        else "stop"
    )
    assert answer.usage.completion_tokens == expected.completion_tokens


@pytest.mark.parametrize("kind", ["benign", "harmful"])
def test_stream_sends_the_verdict_first_and_the_same_text(local_server, local_guard, requests_by_kind, kind):
    image, prompt = requests_by_kind[kind]
    expected = local_guard.generate([image], prompt, max_new_tokens=MAX_TOKENS, do_sample=False)
    with openai_client(local_server).chat.completions.with_streaming_response.create(
        model="demo", messages=[image_message(image, prompt)], max_tokens=MAX_TOKENS, stream=True
    ) as response:
        assert response.headers["x-psaguard-action"] == expected.action
        chunks = list(response.parse())
    assert chunks[0].psaguard["rule"] == expected.verdict.rule
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == expected.text.strip()
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1
    assert (finish[0] == "content_filter") == (expected.action == "refuse")


def test_text_only_chat_follows_the_text_only_policy(local_server):
    answer = openai_client(local_server).chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "what is the colour ?"}], max_tokens=4
    )
    assert answer.psaguard["rule"] == "no_image" and answer.psaguard["action"] == "allow"
    assert answer.choices[0].finish_reason in ("stop", "length")


@pytest.fixture(scope="module")
def blocking_server(local_guard):
    policy = GuardPolicy(level_actions={1: "hint", 2: "hint", 3: "block"})
    config = ServeConfig(on_text_only="refuse")
    with BackgroundServer(create_app(local_guard.with_policy(policy), config)) as server:
        yield server


@pytest.mark.parametrize("stream", [False, True])
def test_blocked_request_is_a_400_carrying_the_verdict(blocking_server, requests_by_action, stream):
    image, prompt = requests_by_action["refuse"]
    with pytest.raises(openai.BadRequestError) as caught:
        chat(blocking_server, image, prompt, stream=stream)
    assert caught.value.code == "content_policy_violation"
    assert caught.value.body["psaguard"]["action"] == "block"
    assert caught.value.response.headers["x-psaguard-action"] == "block"


def test_refused_text_only_stream_is_a_normal_stream_with_content_filter(blocking_server):
    stream = openai_client(blocking_server).chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "hello"}], stream=True
    )
    chunks = list(stream)
    assert chunks[0].psaguard["rule"] == "no_image"
    assert "sorry" in "".join(c.choices[0].delta.content or "" for c in chunks).lower()
    assert chunks[-1].choices[0].finish_reason == "content_filter"


def test_fields_local_mode_cannot_honour_are_refused(local_server):
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(local_server).chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "hi"}], tools=[tool]
        )
    assert caught.value.code == "unsupported_parameter" and caught.value.param == "tools"


@pytest.mark.parametrize("with_image", [True, False])
def test_classifier_only_guard_without_upstream_serves_moderations_only(
    classifier_guard, requests_by_action, with_image
):
    image, prompt = requests_by_action["allow"]
    message = image_message(image, prompt) if with_image else {"role": "user", "content": prompt}
    with BackgroundServer(create_app(classifier_guard)) as server:
        assert openai_client(server).moderations.create(input=prompt).results[0].psaguard["rule"] == "no_image"
        with pytest.raises(openai.BadRequestError) as caught:
            openai_client(server).chat.completions.create(model="demo", messages=[message])
    assert caught.value.code == "generation_unavailable"
