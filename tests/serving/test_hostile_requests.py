"""Hostile requests: bodies that would hold the event loop, slow bodies, untyped-error inputs, CORS preflight
with keys, and the 500 count in /metrics. Each gets a typed 4xx JSON error quickly; probes stay answered."""

from __future__ import annotations

import concurrent.futures
import socket
import time

import httpx
import pytest
from serving_helpers import image_message

from psaguard.serving import ApiKeys, BackgroundServer, LimitsConfig, ServeConfig, create_app

KEY = "k" * 20


def typed_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and set(error) >= {"message", "type", "param", "code"}
    return error


@pytest.fixture(scope="module")
def server(local_guard):
    with BackgroundServer(create_app(local_guard, ServeConfig(limits=LimitsConfig(request_timeout_s=5)))) as serving:
        yield serving


def post_raw(server, path: str, content: bytes, timeout: float = 60) -> httpx.Response:
    headers = {"content-type": "application/json"}
    return httpx.post(server.root_url + path, content=content, headers=headers, timeout=timeout)


def test_many_parts_are_refused_before_parsing_while_probes_answer(server):
    # 200,000 empty text parts (5 MB): parsed and validated on the event loop this took seconds.
    body = b'{"messages": [{"role": "user", "content": [' + b'{"type": "text", "text": ""},' * 200_000
    body += b'{"type": "text", "text": "hi"}]}]}'
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        start = time.perf_counter()
        pending = pool.submit(post_raw, server, "/v1/chat/completions", body)
        probes = []
        while not pending.done() and len(probes) < 500:
            probe_start = time.perf_counter()
            assert httpx.get(server.root_url + "/healthz", timeout=10).status_code == 200
            probes.append(time.perf_counter() - probe_start)
        response = pending.result(timeout=60)
        elapsed = time.perf_counter() - start
    typed_error(response, 400, "too_many_items")
    assert elapsed < 10 and max(probes) < 1.0  # generous bounds: a shared CPU


def test_too_many_messages_or_parts_are_400s_before_validation(server):
    messages = [{"role": "user", "content": "hi"}] * 300
    typed_error(
        httpx.post(server.root_url + "/v1/chat/completions", json={"messages": messages}), 400, "too_many_messages"
    )
    parts = [{"type": "text", "text": ""}] * 2000
    chat = {"messages": [{"role": "user", "content": parts}]}
    typed_error(httpx.post(server.root_url + "/v1/chat/completions", json=chat), 400, "too_many_parts")


def test_deeply_nested_json_is_a_400(server):
    for depth in (100_000, 5_000):  # over the pre-count; under it but past the parser's recursion limit
        body = b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"
        typed_error(
            post_raw(server, "/v1/chat/completions", body), 400, "too_many_items" if depth > 50_000 else "invalid_json"
        )


def test_lone_surrogates_are_400s(server):
    chat = b'{"messages": [{"role": "user", "content": "hi"}], "model": "\\ud800"}'
    typed_error(post_raw(server, "/v1/chat/completions", chat), 400, "invalid_json")
    text_only = b'{"messages": [{"role": "user", "content": "hi \\ud800 there"}]}'
    typed_error(post_raw(server, "/v1/chat/completions", text_only), 400, "invalid_json")
    moderation = b'{"input": "\\udfff"}'
    typed_error(post_raw(server, "/v1/moderations", moderation), 400, "invalid_json")
    pair = b'{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}], "max_tokens": 2}'  # a real emoji
    assert post_raw(server, "/v1/chat/completions", pair).status_code == 200


def read_rest_of_response(client: socket.socket, received: bytes) -> bytes:
    """The rest of one HTTP response whose first bytes are `received` (headers and body may come in separate
    packets). Bounded: at most 50 reads, stopping once the body has its content length or the server closes."""

    def complete(data: bytes) -> bool:
        head, separator, body = data.partition(b"\r\n\r\n")
        lengths = [
            line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        ]
        return bool(separator) and bool(lengths) and len(body) >= int(lengths[0])

    rest = b""
    for _ in range(50):
        if complete(received + rest):
            break
        try:
            chunk = client.recv(4096)
        except TimeoutError:
            continue
        if not chunk:
            break
        rest += chunk
    return rest


def test_a_slow_body_gets_408_within_the_request_timeout(local_guard):
    config = ServeConfig(limits=LimitsConfig(request_timeout_s=0.5))
    with (
        BackgroundServer(create_app(local_guard, config)) as serving,
        socket.create_connection(("127.0.0.1", serving.port), timeout=5) as client,
    ):
        head = b"POST /v1/moderations HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
        client.sendall(head)
        client.settimeout(0.2)
        start, answer = time.perf_counter(), b""
        # One byte every 0.2 s for at most 15 s: a server without the body timeout would wait for ever. The
        # bound is generous (30x the timeout) so a loaded machine's scheduling delays do not fail the test.
        for _ in range(75):
            try:
                answer = client.recv(4096)
                break
            except TimeoutError:
                client.sendall(b" ")
        elapsed = time.perf_counter() - start
        answer += read_rest_of_response(client, answer)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert b"body_timeout" in answer and elapsed < 15


def test_cors_preflight_passes_without_a_key_but_requests_still_need_one(local_guard):
    config = ServeConfig(cors_origins=("http://app.example",))
    with BackgroundServer(create_app(local_guard, config, api_keys=ApiKeys([KEY]))) as serving:
        preflight = httpx.options(
            serving.root_url + "/v1/moderations",
            headers={
                "origin": "http://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        unauthorised = httpx.post(
            serving.root_url + "/v1/moderations", json={"input": "hi"}, headers={"origin": "http://app.example"}
        )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://app.example"
    typed_error(unauthorised, 401, "invalid_api_key")


def test_internal_errors_are_counted_by_status_in_metrics(local_guard, requests_by_action):
    broken = local_guard.with_policy(local_guard.policy)

    def classify_requests(requests, **kwargs):
        raise ValueError("a bug")

    broken.classify_requests = classify_requests
    image, prompt = requests_by_action["allow"]
    body = {"input": image_message(image, prompt)["content"]}
    with BackgroundServer(create_app(broken), log_level="critical") as serving:
        typed_error(httpx.post(serving.root_url + "/v1/moderations", json=body), 500, "internal_error")
        metrics = httpx.get(serving.root_url + "/metrics").text
    assert 'psaguard_requests_total{endpoint="/v1/moderations",status="500"} 1.0' in metrics
    assert 'psaguard_errors_total{code="internal_error"} 1.0' in metrics
