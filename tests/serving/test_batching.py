"""Dynamic batching: concurrent requests share one classify_requests call; one bad input never fails its batch-mates."""

from __future__ import annotations

import asyncio
import time

import pytest

from psaguard.errors import InvalidPromptError
from psaguard.request import GuardRequest
from psaguard.serving import DynamicBatcher, ServeMetrics


class RecordingClassifier:
    """Wraps ``guard.classify_requests``, recording batch sizes and refusing the prompt 'bad' (as the guard
    refuses a prompt it cannot tokenize, failing the whole call)."""

    def __init__(self, guard) -> None:
        self.guard = guard
        self.sizes: list[int] = []

    def __call__(self, requests):
        prompts = [request.prompt for request in requests]
        self.sizes.append(len(prompts))
        if "bad" in prompts:
            raise InvalidPromptError(f"request {prompts.index('bad')}: cannot be tokenized")
        return self.guard.classify_requests(requests)


def batcher(classify, max_batch=8, max_wait_ms=200.0) -> DynamicBatcher:
    return DynamicBatcher(classify, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=100, metrics=ServeMetrics())


async def test_concurrent_requests_coalesce_and_match_serial_verdicts(local_guard, requests_by_kind):
    requests = list(requests_by_kind.values())
    classify = RecordingClassifier(local_guard)
    queue = batcher(classify)
    await queue.start()
    verdicts = await asyncio.gather(*(queue.classify(image, prompt) for image, prompt in requests))
    await queue.stop()
    assert classify.sizes == [len(requests)]  # all arrived within the wait: one forward pass
    for (image, prompt), verdict in zip(requests, verdicts):
        expected = local_guard.classify(image, prompt)
        assert (verdict.action, verdict.rule) == (expected.action, expected.rule)
        assert verdict.type_probs == pytest.approx(expected.type_probs, abs=1e-5)


async def test_a_bad_input_fails_alone(local_guard, requests_by_action):
    image, prompt = requests_by_action["allow"]
    classify = RecordingClassifier(local_guard)
    queue = batcher(classify)
    await queue.start()
    results = await asyncio.gather(
        queue.classify(image, prompt),
        queue.classify(image, "bad"),
        queue.classify(image, prompt),
        return_exceptions=True,
    )
    await queue.stop()
    assert isinstance(results[1], InvalidPromptError)
    assert results[0].rule == results[2].rule == local_guard.classify(image, prompt).rule
    assert classify.sizes == [3, 1, 1, 1]  # the failed batch, then each request alone


async def test_max_batch_bounds_each_forward_pass_and_one_disables_batching(local_guard, requests_by_action):
    image, prompt = requests_by_action["allow"]
    for max_batch, expected in ((2, [2, 2, 1]), (1, [1, 1, 1, 1, 1])):
        classify = RecordingClassifier(local_guard)
        queue = batcher(classify, max_batch=max_batch)
        await queue.start()
        await asyncio.gather(*(queue.classify(image, prompt) for _ in range(5)))
        await queue.stop()
        assert classify.sizes == expected


async def test_stop_judges_the_queued_requests_then_refuses_new_ones(local_guard, requests_by_action):
    image, prompt = requests_by_action["allow"]
    queue = batcher(RecordingClassifier(local_guard), max_wait_ms=5000.0)
    await queue.start()
    pending = [asyncio.ensure_future(queue.classify(image, prompt)) for _ in range(3)]
    await asyncio.sleep(0.05)
    await queue.stop()  # well before the 5 s wait ends
    assert all(task.done() and task.result().rule for task in pending)
    with pytest.raises(Exception, match="shutting down"):
        await queue.classify(image, prompt)


async def test_an_idle_worker_waits_only_for_requests_already_on_their_way(local_guard, requests_by_action):
    image, prompt = requests_by_action["allow"]
    classify = RecordingClassifier(local_guard)
    queue = batcher(classify, max_wait_ms=3000.0)
    await queue.start()
    start = time.perf_counter()
    await queue.classify(image, prompt)  # nobody else is coming: judged at once, not after 3 s
    alone = time.perf_counter() - start
    queue.expect(1)  # a request decoding its images
    first = asyncio.ensure_future(queue.classify(image, prompt))
    await asyncio.sleep(0.2)
    second = queue.submit(GuardRequest(images=(image,), prompt=prompt))  # the announced request arrives
    queue.expect(-1)
    await asyncio.gather(first, second)
    await queue.stop()
    assert alone < 1.5 and classify.sizes == [1, 2]
