"""What the world's runs share (``world run`` and ``world demo-guard``): a clock of their steps, torch's thread
count for the run, and a Stage I run's first and last training loss."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ["StepClock", "torch_threads", "train_losses"]

logger = logging.getLogger(__name__)


class StepClock:
    """Wall-clock seconds of each step, logged under ``label`` as each ends."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self._last, 1)
        self._last = now
        logger.info("%s: %s done in %.1f s", self.label, name, self.timings[name])


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU thread count set to ``threads`` for the run and restored after it (None: left alone)."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_losses(run_dir: Path, key: str = "head_loss") -> tuple[float, float]:
    """The first and last training value of ``key`` in a run's ``metrics.jsonl`` (evaluation records left out)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r[key] for r in records if key in r and not any(k.startswith("eval") for k in r)]
    return train[0], train[-1]
