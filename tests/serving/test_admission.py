"""Admission control: image pixels in flight are bounded (503 + Retry-After beyond), and abandoned model work
stops (a timed-out generation ends at its next token; queued work for it never starts)."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import numpy as np
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from serving_helpers import image_message
from transformers import StoppingCriteriaList

from psaguard.serving import BackgroundServer, LimitsConfig, ServeConfig, create_app
from psaguard.serving.admission import Cancellation


def guard_copy(guard, **config):
    """A guard of its own (shared weights) with ``config`` changes, to patch without touching ``guard``."""
    return type(guard)(
        guard.model, guard.processor, guard.config.model_copy(update=config), guard.modules, guard.backbone
    )


def gauge(server, name: str) -> float:
    families = text_string_to_metric_families(httpx.get(server.root_url + "/metrics").text)
    return next(sample.value for family in families for sample in family.samples if sample.name == name)


def moderation(image: Image.Image, prompt: str) -> dict:
    return {"input": image_message(image, prompt)["content"]}


def test_pixels_over_the_in_flight_budget_get_503_with_retry_after(local_guard, requests_by_action):
    guard = guard_copy(local_guard, max_image_pixels=5000)
    classify_requests = guard.classify_requests

    def slow(requests, **kwargs):
        time.sleep(1.0)
        return classify_requests(requests, **kwargs)

    guard.classify_requests = slow
    _, prompt = requests_by_action["allow"]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))  # 4,096 px
    config = ServeConfig(limits=LimitsConfig(max_pixels_in_flight=5000))
    with BackgroundServer(create_app(guard, config)) as server, concurrent.futures.ThreadPoolExecutor(1) as pool:
        url = server.root_url + "/v1/moderations"
        first = pool.submit(httpx.post, url, json=moderation(image, prompt), timeout=60)
        deadline = time.monotonic() + 10
        while gauge(server, "psaguard_pixels_in_flight") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gauge(server, "psaguard_pixels_in_flight") == 64 * 64
        refused = httpx.post(url, json=moderation(image, prompt), timeout=60)  # 8,192 px would be in flight
        assert first.result(timeout=60).status_code == 200
        after = httpx.post(url, json=moderation(image, prompt), timeout=60)  # the budget is free again
        left = gauge(server, "psaguard_pixels_in_flight")
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    assert after.status_code == 200 and left == 0


def test_a_timed_out_generation_stops_and_queued_ones_never_start(local_guard, requests_by_action):
    guard = guard_copy(local_guard)
    generate = guard.generate
    started: list[float] = []
    steps: list[int] = []

    def slow_generate(images, conversation, **kwargs):
        # 200 steps of 10 ms, checking the stopping criteria after each as transformers' generate does
        started.append(time.monotonic())
        criteria = kwargs.get("stopping_criteria") or StoppingCriteriaList()
        step = 0
        while step < 200 and not (step and bool(criteria(torch.zeros((1, 1), dtype=torch.long), None).all())):
            time.sleep(0.01)
            step += 1
        steps.append(step)
        return generate(images, conversation, **kwargs)

    guard.generate = slow_generate
    image, prompt = requests_by_action["allow"]
    chat = {"messages": [image_message(image, prompt)], "max_tokens": 4}
    config = ServeConfig(limits=LimitsConfig(request_timeout_s=0.3), check_answers=False)  # one generation at a time
    with BackgroundServer(create_app(guard, config)) as server, concurrent.futures.ThreadPoolExecutor(2) as pool:
        url = server.base_url + "/chat/completions"
        answers = [pool.submit(httpx.post, url, json=chat, timeout=60) for _ in range(2)]
        assert [answer.result(timeout=60).status_code for answer in answers] == [504, 504]
        # Until every generation that started has ended and none started for 0.5 s (unstopped: 2 x 2 s).
        deadline, quiet_since, seen = time.monotonic() + 10, time.monotonic(), (0, 0)
        while time.monotonic() < deadline:
            now_seen = (len(started), len(steps))
            if now_seen != seen or now_seen[0] != now_seen[1]:
                seen, quiet_since = now_seen, time.monotonic()
            elif time.monotonic() - quiet_since > 0.5:
                break
            time.sleep(0.02)
    assert 1 <= len(steps) <= 2 and sum(steps) < 100, steps  # unstopped: 200 steps each, both run


def test_a_cancelled_generation_ends_at_its_next_token(local_guard, requests_by_action):
    image, prompt = requests_by_action["allow"]
    cancelled = Cancellation()
    cancelled.cancel()
    full = local_guard.generate(image, prompt, max_new_tokens=8, do_sample=False)
    stopped = local_guard.generate(
        image, prompt, max_new_tokens=8, do_sample=False, stopping_criteria=StoppingCriteriaList([cancelled])
    )
    assert stopped.completion_tokens == 1 < full.completion_tokens
