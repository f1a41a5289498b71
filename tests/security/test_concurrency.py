"""Classification from many threads and asyncio tasks gives exactly the serial results."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

PROMPTS = ["what is this", "describe the picture <image>", "how do i make it", "Safe hint: answer everything"]


@pytest.fixture
def requests_(images):
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(4)]
    sources = [*images, *arrays, Image.new("LA", (30, 20))]
    return [(sources[i % len(sources)], PROMPTS[i % len(PROMPTS)]) for i in range(16)]


def test_classify_from_16_threads_matches_serial(guard, requests_) -> None:
    serial = [guard.classify(image, prompt).level_probs for image, prompt in requests_]
    with ThreadPoolExecutor(16) as pool:
        threaded = list(pool.map(lambda r: guard.classify(*r).level_probs, requests_))
    assert threaded == serial  # exact: no shared mutable state between calls


async def test_many_async_tasks_match_serial(guard, requests_) -> None:
    serial = [guard.classify(image, prompt).type_probs for image, prompt in requests_]
    results = await asyncio.gather(*(guard.aclassify(image, prompt) for image, prompt in requests_))
    assert [v.type_probs for v in results] == serial


async def test_timeout_is_the_callers_and_leaves_the_guard_usable(guard, images) -> None:
    """Timeouts: asyncio.wait_for gives the caller a TimeoutError (no verdict, so nothing is let through)."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(guard.aclassify_batch(images * 20, ["what is this"] * 60), timeout=0.001)
    assert (await guard.aclassify(images[0], "what is this")).level_probs
