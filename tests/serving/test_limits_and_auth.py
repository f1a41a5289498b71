"""Limits (4xx in OpenAI's error shape), API keys, timeouts that fail closed, and graceful shutdown."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import os
import time

import httpx
import numpy as np
import openai
import pytest
import torch
from PIL import Image
from serving_helpers import data_url

from psaguard import SafetyGuardConfig
from psaguard.images.decode import MAX_IMAGES_PER_REQUEST
from psaguard.serving import ApiKeys, BackgroundServer, BatchingConfig, LimitsConfig, ServeConfig, create_app
from psaguard.serving.auth import load_api_keys

KEY = "k" * 20


def openai_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and set(error) >= {"message", "type", "param", "code"}
    return error


def test_the_servers_image_limit_and_the_guards_share_one_default():
    assert LimitsConfig().max_images == SafetyGuardConfig().max_images_per_request == MAX_IMAGES_PER_REQUEST


@pytest.fixture(scope="module")
def strict_server(local_guard):
    limits = LimitsConfig(max_body_bytes=64 * 1024, max_images=1, max_image_bytes=2000, max_prompt_chars=100)
    app = create_app(local_guard, ServeConfig(limits=limits), api_keys=ApiKeys([KEY]))
    with BackgroundServer(app) as server:
        yield server


def post(server, path: str, body, key: str | None = KEY, **kwargs) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.root_url + path, json=body, headers=headers, timeout=60, **kwargs)


def test_requests_without_a_valid_key_get_401_and_probes_stay_open(strict_server):
    for key in (None, "wrong-key-wrong-key", KEY[:-1]):
        openai_error(post(strict_server, "/v1/moderations", {"input": "hi"}, key=key), 401, "invalid_api_key")
    assert httpx.get(strict_server.root_url + "/metrics").status_code == 401
    assert httpx.get(strict_server.root_url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(strict_server.root_url + "/readyz").status_code == 200
    answer = openai.OpenAI(base_url=strict_server.base_url, api_key=KEY, max_retries=0).moderations.create(input="hi")
    assert answer.results[0].psaguard["rule"] == "no_image"


def test_body_over_the_limit_is_413_with_or_without_content_length(strict_server):
    big = {"input": "x" * 70_000}
    openai_error(post(strict_server, "/v1/moderations", big), 413, "body_too_large")

    def chunks():
        yield b'{"input": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}'

    response = httpx.post(
        strict_server.root_url + "/v1/moderations", content=chunks(), headers={"authorization": f"Bearer {KEY}"}
    )
    openai_error(response, 413, "body_too_large")


def test_limits_on_images_image_bytes_and_prompt_length(strict_server, requests_by_action):
    image, _ = requests_by_action["allow"]
    part = {"type": "image_url", "image_url": {"url": data_url(image)}}
    text = {"type": "text", "text": "hi"}
    openai_error(post(strict_server, "/v1/moderations", {"input": [text, part, part]}), 400, "too_many_images")
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    big = {"type": "image_url", "image_url": {"url": data_url(noise)}}  # ~12 KB of PNG, over 2000 bytes
    openai_error(post(strict_server, "/v1/moderations", {"input": [text, big]}), 400, "image_too_large")
    openai_error(post(strict_server, "/v1/moderations", {"input": "y" * 101}), 400, "prompt_too_long")
    chat = {"messages": [{"role": "user", "content": "y" * 101}]}
    openai_error(post(strict_server, "/v1/chat/completions", chat), 400, "prompt_too_long")


def test_malformed_bodies_are_400s(strict_server):
    response = httpx.post(
        strict_server.root_url + "/v1/moderations", content=b"{not json", headers={"authorization": f"Bearer {KEY}"}
    )
    openai_error(response, 400, "invalid_json")
    assert post(strict_server, "/v1/moderations", {"input": "x", "bogus": 1}).status_code == 400
    assert post(strict_server, "/v1/chat/completions", {"messages": []}).status_code == 400
    bad_url = {"input": [{"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}}]}
    openai_error(post(strict_server, "/v1/moderations", bad_url), 400, "invalid_image")


def slow_guard(guard, seconds: float):
    """A guard of its own whose classify_requests takes ``seconds`` longer."""
    slow = guard.with_policy(guard.policy)
    classify_requests = slow.classify_requests

    def delayed(requests, **kwargs):
        time.sleep(seconds)
        return classify_requests(requests, **kwargs)

    slow.classify_requests = delayed
    return slow


def test_request_not_judged_in_time_fails_closed_with_504(local_guard, requests_by_action):
    image, prompt = requests_by_action["allow"]
    config = ServeConfig(limits=LimitsConfig(request_timeout_s=0.2))
    body = {"input": [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": data_url(image)}}]}
    with BackgroundServer(create_app(slow_guard(local_guard, 1.0), config)) as server:
        response = post(server, "/v1/moderations", body, key=None)
        error = openai_error(response, 504, "timeout")
        assert "results" not in response.json() and error["type"] == "server_error"


def test_graceful_shutdown_answers_the_requests_in_flight(local_guard, requests_by_action):
    image, prompt = requests_by_action["allow"]
    expected = local_guard.classify(image, prompt)
    body = {"input": [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": data_url(image)}}]}
    config = ServeConfig(batching=BatchingConfig(max_batch=64))
    server = BackgroundServer(create_app(slow_guard(local_guard, 1.0), config)).start()  # requests wait in the queue
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(post, server, "/v1/moderations", body, None) for _ in range(4)]
        deadline = time.monotonic() + 30
        while len(server.server.server_state.tasks) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)  # until all four requests are in flight
        assert len(server.server.server_state.tasks) == 4
        server.stop()  # should_exit: no new connections, in-flight requests finish
        responses = [future.result(timeout=60) for future in futures]
    assert [r.status_code for r in responses] == [200] * 4
    assert {r.json()["results"][0]["psaguard"]["rule"] for r in responses} == {expected.rule}


def test_api_keys_come_from_a_file_and_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "keys"
    path.write_text("# comment\n" + "a" * 16 + "\n\n")
    monkeypatch.setenv("PSAGUARD_API_KEYS", "b" * 16 + ", " + "c" * 16)
    keys = load_api_keys(path)
    assert all(keys.allows(f"Bearer {c * 16}") for c in "abc")
    assert not keys.allows("Bearer " + "d" * 16) and not keys.allows("Basic " + "a" * 16) and not keys.allows(None)
    assert "a" * 16 not in repr(keys)
    assert ApiKeys().allows(None)


def test_a_guard_that_cannot_judge_fails_closed_with_500(guard, images):
    with torch.no_grad():
        for parameter in guard.modules.parameters():  # a diverged head: every score is NaN
            parameter.fill_(float("nan"))
    body = {"input": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": data_url(images[0])}}]}
    with BackgroundServer(create_app(guard)) as server:
        response = post(server, "/v1/moderations", body, key=None)
        chat = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": body["input"]}]}, None)
    assert "results" not in response.json()
    openai_error(response, 500, "guard_internal_error")
    assert chat.status_code == 500 and "choices" not in chat.json()


def test_an_unexpected_error_is_a_500_in_openais_shape(local_guard, requests_by_action):
    broken = local_guard.with_policy(local_guard.policy)  # a guard of its own, to break

    def classify_requests(requests, **kwargs):
        raise ValueError("a bug")

    broken.classify_requests = classify_requests
    image, prompt = requests_by_action["allow"]
    body = {"input": [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": data_url(image)}}]}
    with BackgroundServer(create_app(broken), log_level="critical") as server:
        response = post(server, "/v1/moderations", body, key=None)
    error = openai_error(response, 500, "internal_error")
    assert error["type"] == "server_error" and "a bug" not in error["message"]  # no internals leak


def test_images_decode_with_the_guards_formats(strict_server, requests_by_action):
    image, _ = requests_by_action["allow"]
    buffer = io.BytesIO()
    image.convert("RGB").resize((8, 8)).save(buffer, format="BMP")  # BMP is opt-in in the guard's config
    url = "data:image/bmp;base64," + base64.b64encode(buffer.getvalue()).decode()
    body = {"input": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": url}}]}
    error = openai_error(post(strict_server, "/v1/moderations", body), 400, "invalid_image")
    assert "(BMP: not enabled)" in error["message"]


def test_key_file_edits_are_picked_up_and_a_broken_file_fails_closed(tmp_path, monkeypatch):
    monkeypatch.delenv("PSAGUARD_API_KEYS", raising=False)
    path = tmp_path / "keys"
    path.write_text("a" * 16 + "\n")
    keys = load_api_keys(path, reload_interval_s=0.0)
    assert keys.allows("Bearer " + "a" * 16)
    for text, allowed in (("b" * 16 + "\n", "b"), ("", None), ("short\n", None), ("c" * 16 + "\n", "c")):
        path.write_text(text)
        stamp = time.time_ns() + 1_000_000_000  # a new modification time even on coarse file systems
        os.utime(path, ns=(stamp, stamp))
        assert [c for c in "abc" if keys.allows(f"Bearer {c * 16}")] == ([allowed] if allowed else [])
    path.unlink()
    assert not keys.allows("Bearer " + "c" * 16) and not keys.allows(None)
