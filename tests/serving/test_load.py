"""A bounded loopback load test: concurrent clients, nothing lost, verdicts equal serial classify, metrics add up."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving_helpers import data_url

from psaguard.serving import BackgroundServer, BatchingConfig, ServeConfig, create_app

REQUESTS = 80
CLIENTS = 16


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_concurrent_load_loses_nothing_and_matches_serial_verdicts(local_guard, requests_by_kind):
    kinds = list(requests_by_kind)
    bodies = {
        kind: {"input": [{"type": "text", "text": p}, {"type": "image_url", "image_url": {"url": data_url(i)}}]}
        for kind, (i, p) in requests_by_kind.items()
    }
    expected = {kind: local_guard.classify(image, prompt) for kind, (image, prompt) in requests_by_kind.items()}
    plan = [kinds[n % len(kinds)] for n in range(REQUESTS)]
    config = ServeConfig(batching=BatchingConfig(max_batch=16, max_wait_ms=10))

    async def drive(base: str) -> list[tuple[str, httpx.Response]]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        for kind in plan:
            queue.put_nowait(kind)
        answers: list[tuple[str, httpx.Response]] = []

        async def client() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=60) as http:
                while not queue.empty():
                    kind = queue.get_nowait()
                    answers.append((kind, await http.post("/v1/moderations", json=bodies[kind])))

        await asyncio.wait_for(asyncio.gather(*(client() for _ in range(CLIENTS))), timeout=240)
        return answers

    with BackgroundServer(create_app(local_guard, config)) as server:
        answers = asyncio.run(drive(server.root_url))
        metrics = samples(httpx.get(server.root_url + "/metrics").text)
    assert len(answers) == REQUESTS and all(r.status_code == 200 for _, r in answers)
    for kind, response in answers:
        verdict = response.json()["results"][0]["psaguard"]
        assert (verdict["action"], verdict["rule"]) == (expected[kind].action, expected[kind].rule)
        assert verdict["type_probs"] == pytest.approx(expected[kind].type_probs, abs=1e-5)
    status = (("endpoint", "/v1/moderations"), ("status", "200"))
    assert metrics[("psaguard_requests_total", status)] == REQUESTS
    verdicts = sum(v for (name, _), v in metrics.items() if name == "psaguard_verdicts_total")
    assert verdicts == REQUESTS
    assert metrics[("psaguard_batch_size_sum", ())] == REQUESTS  # every request judged exactly once
    batches = metrics[("psaguard_batch_size_count", ())]
    assert batches < REQUESTS  # concurrency coalesced some requests
    by_label = Counter((expected[kind].action, expected[kind].type.code) for kind in plan)
    for (action, type_code), count in by_label.items():
        assert metrics[("psaguard_verdicts_total", (("action", action), ("type", type_code)))] == count
