"""Proxy mode: a classifier-only guard in front of an upstream OpenAI-compatible server on loopback.

The upstream is psaguard's own local mode (the demo model), or a recording echo server where the test must
see exactly what the proxy forwarded.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from serving_helpers import data_url, image_message, openai_client

from psaguard.policy import GuardPolicy
from psaguard.serving import BackgroundServer, LimitsConfig, ServeConfig, create_app

MAX_TOKENS = 12
HINT_EVERY_LEVEL = GuardPolicy(level_actions={1: "hint", 2: "hint", 3: "hint"})
"""A policy under which the demo guard hints on the requests it refuses (it hints on none of the demo's own)."""


def ask(server, image, prompt, **kwargs):
    return openai_client(server).chat.completions.with_raw_response.create(
        model="demo", messages=[image_message(image, prompt)], max_tokens=MAX_TOKENS, **kwargs
    )


def test_allowed_request_is_forwarded_and_answered_by_the_upstream(proxy_server, local_server, requests_by_action):
    image, prompt = requests_by_action["allow"]
    direct = ask(local_server, image, prompt).parse()
    raw = ask(proxy_server, image, prompt)
    proxied = raw.parse()
    assert proxied.choices[0].message.content == direct.choices[0].message.content
    assert raw.headers["x-psaguard-action"] == "allow" and proxied.psaguard["rule"] == direct.psaguard["rule"]


def test_refused_request_never_reaches_the_upstream(proxy_server, local_guard, requests_by_action):
    image, prompt = requests_by_action["refuse"]
    expected = local_guard.classify(image, prompt)
    answer = ask(proxy_server, image, prompt).parse()
    assert answer.choices[0].finish_reason == "content_filter"
    assert answer.choices[0].message.content == expected.refusal
    assert answer.model == "demo" and answer.psaguard["action"] == "refuse"


def test_upstream_stream_is_passed_through_chunk_by_chunk(proxy_server, local_server, requests_by_action):
    image, prompt = requests_by_action["allow"]

    def stream(server):
        return list(
            openai_client(server).chat.completions.create(
                model="demo", messages=[image_message(image, prompt)], max_tokens=MAX_TOKENS, stream=True
            )
        )

    direct, proxied = stream(local_server), stream(proxy_server)
    assert [c.choices[0].delta.content for c in proxied] == [c.choices[0].delta.content for c in direct]
    assert proxied[0].psaguard["action"] == "allow" and proxied[0].psaguard["rule"] == direct[0].psaguard["rule"]
    assert proxied[-1].choices[0].finish_reason == direct[-1].choices[0].finish_reason


def test_refused_stream_is_answered_by_the_proxy(proxy_server, requests_by_action):
    image, prompt = requests_by_action["refuse"]
    chunks = list(
        openai_client(proxy_server).chat.completions.create(
            model="demo", messages=[image_message(image, prompt)], stream=True
        )
    )
    assert chunks[0].psaguard["action"] == "refuse" and chunks[-1].choices[0].finish_reason == "content_filter"


@pytest.fixture(scope="module")
def echo_upstream():
    """An OpenAI-compatible upstream that answers with the JSON of the request it received."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def complete(request: Request) -> dict:
        body = await request.json()
        return {
            "id": "chatcmpl-echo",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", ""),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": json.dumps(body)}, "finish_reason": "stop"}
            ],
        }

    with BackgroundServer(app) as server:
        yield server


@pytest.fixture(scope="module")
def echo_proxy(classifier_guard, echo_upstream):
    config = ServeConfig(mode="proxy", upstream=echo_upstream.base_url, check_answers=False)
    with BackgroundServer(create_app(classifier_guard, config)) as server:
        yield server


@pytest.fixture(scope="module")
def hinting_guard(classifier_guard):
    return classifier_guard.with_policy(HINT_EVERY_LEVEL)


@pytest.fixture(scope="module")
def hint_echo_proxy(hinting_guard, echo_upstream):
    config = ServeConfig(mode="proxy", upstream=echo_upstream.base_url, check_answers=False)
    with BackgroundServer(create_app(hinting_guard, config)) as server:
        yield server


@pytest.fixture(scope="module")
def hint_local_server(local_guard):
    with BackgroundServer(create_app(local_guard.with_policy(HINT_EVERY_LEVEL), ServeConfig())) as server:
        yield server


def test_hint_is_appended_to_the_last_user_turn_and_the_rest_forwarded_unchanged(
    hint_echo_proxy, hinting_guard, requests_by_action
):
    image, prompt = requests_by_action["refuse"]  # hinted under HINT_EVERY_LEVEL
    verdict = hinting_guard.classify(image, prompt)
    assert verdict.action == "hint"
    answer = ask(hint_echo_proxy, image, prompt, temperature=0.0, user="someone", extra_body={"top_k": 7}).parse()
    forwarded = json.loads(answer.choices[0].message.content)
    assert forwarded["top_k"] == 7 and forwarded["user"] == "someone" and forwarded["max_tokens"] == MAX_TOKENS
    text_part = forwarded["messages"][0]["content"][1]
    assert text_part["text"] == f"{prompt}\nSafe Hint: {verdict.hint}"
    assert forwarded["messages"][0]["content"][0]["type"] == "image_url"  # the image goes upstream as sent
    assert answer.psaguard["action"] == "hint"


def test_allowed_request_is_forwarded_byte_for_byte_in_its_fields(echo_proxy, requests_by_action):
    image, prompt = requests_by_action["allow"]
    message = image_message(image, prompt)
    answer = openai_client(echo_proxy).chat.completions.create(model="demo", messages=[message], max_tokens=3)
    assert json.loads(answer.choices[0].message.content) == {"model": "demo", "messages": [message], "max_tokens": 3}


@pytest.mark.parametrize("extra", ["data", "base64", "image_url", "file_id", "uri"])
def test_an_image_url_with_a_second_payload_is_refused_before_judging(echo_proxy, requests_by_action, extra):
    benign, harmful = requests_by_action["allow"][0], requests_by_action["refuse"][0]
    message = image_message(benign, "what is it ?")
    # the guard would judge `url` while an upstream reading the other field would see the harmful image
    message["content"][0]["image_url"][extra] = data_url(harmful)
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(echo_proxy).chat.completions.create(model="demo", messages=[message], max_tokens=3)
    assert caught.value.status_code == 400  # before: judged on `url`, forwarded with both (echo answers 200)


def test_unreachable_upstream_is_a_502_after_judging(classifier_guard, requests_by_action):
    config = ServeConfig(mode="proxy", upstream="http://127.0.0.1:9/v1", upstream_timeout_s=5)
    image, prompt = requests_by_action["allow"]
    with (
        BackgroundServer(create_app(classifier_guard, config)) as server,
        pytest.raises(openai.APIStatusError) as caught,
    ):
        ask(server, image, prompt)
    assert caught.value.status_code == 502 and caught.value.code == "upstream_unavailable"


def post_chat(server, body: dict) -> httpx.Response:
    return httpx.post(server.base_url + "/chat/completions", json=body, timeout=60)


def test_a_trailing_assistant_turn_is_refused_as_in_local_mode(
    hint_echo_proxy, hint_local_server, hinting_guard, requests_by_action
):
    image, prompt = requests_by_action["refuse"]  # judged 'hint' here: the hint would land before the prefill
    assert hinting_guard.classify(image, prompt).action == "hint"
    messages = [image_message(image, prompt), {"role": "assistant", "content": "Sure, here is"}]
    local = post_chat(hint_local_server, {"messages": messages, "max_tokens": 3})
    proxied = post_chat(hint_echo_proxy, {"messages": messages})
    assert proxied.status_code == local.status_code == 400, proxied.text
    assert proxied.json()["error"]["code"] == local.json()["error"]["code"] == "invalid_prompt"
    continued = post_chat(hint_echo_proxy, {"messages": messages, "continue_final_message": True})
    assert continued.status_code == 400 and continued.json()["error"]["code"] == "unsupported_parameter"


def test_only_allow_listed_fields_are_forwarded(echo_proxy, requests_by_action):
    image, prompt = requests_by_action["allow"]
    message = image_message(image, prompt)
    for field, value in (
        ("chat_template", "{{ messages }}"),
        ("add_generation_prompt", False),
        ("continue_final_message", True),
        ("custom", 7),
    ):
        refused = post_chat(echo_proxy, {"messages": [message], field: value})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == field
    with_images = {**message, "images": ["aGk="]}  # an image the guard would never see
    refused = post_chat(echo_proxy, {"messages": [with_images]})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages[0].images"
    named = {**message, "name": "system"}
    answer = post_chat(echo_proxy, {"messages": [named], "seed": 3, "stop": ["\n"]})
    forwarded = json.loads(answer.json()["choices"][0]["message"]["content"])
    assert forwarded == {"messages": [message], "seed": 3, "stop": ["\n"]}  # 'name' dropped


def test_a_hinted_request_whose_last_turn_has_no_content_is_a_400(hint_echo_proxy, requests_by_action):
    image, prompt = requests_by_action["refuse"]  # hinted under HINT_EVERY_LEVEL
    for last in ({"role": "user", "content": None}, {"role": "user"}):
        response = post_chat(hint_echo_proxy, {"messages": [image_message(image, prompt), last]})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "messages[1].content"


@pytest.fixture(scope="module")
def endless_line_upstream():
    """An upstream whose stream sends one event, then a line that never ends (4 MiB without a newline)."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def complete(request: Request) -> StreamingResponse:
        async def events():
            yield b'data: {"id": "x", "object": "chat.completion.chunk", "choices": []}\n\n'
            for _ in range(64):
                yield b"data: " + b"x" * 65536

        return StreamingResponse(events(), media_type="text/event-stream")

    with BackgroundServer(app) as server:
        yield server


def test_an_upstream_line_over_the_cap_ends_the_stream_with_an_error(
    classifier_guard, endless_line_upstream, requests_by_action
):
    image, prompt = requests_by_action["allow"]
    limits = LimitsConfig(max_sse_line_bytes=256 * 1024)
    config = ServeConfig(mode="proxy", upstream=endless_line_upstream.base_url, limits=limits, check_answers=False)
    body = {"messages": [image_message(image, prompt)], "stream": True}
    with BackgroundServer(create_app(classifier_guard, config)) as server:
        response = post_chat(server, body)
    assert response.status_code == 200
    assert '"psaguard"' in response.text.split("\n\n")[0]  # the first event, tagged with the verdict
    assert "upstream_line_too_long" in response.text and len(response.content) < 64 * 1024
