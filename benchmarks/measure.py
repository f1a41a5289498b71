"""Timing, memory and peak-FLOP helpers shared by the benchmark suites (CPU and GPU).

Timings are wall-clock seconds around a call, synchronising CUDA when the work runs there. Variants are
timed round-robin so that background load on a shared machine hits all of them alike; results are
reported as the median with the spread (min and max) of the runs.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Runs",
    "into_anonymous_memory",
    "matmul_tflops",
    "peak_rss_bytes",
    "reset_peak_rss",
    "round_robin",
    "rss_bytes",
    "time_call",
]


class Runs(BaseModel):
    """Repeated measurements of one quantity (seconds, or any unit the caller names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    values: tuple[float, ...] = Field(description="Every measured value, in the order measured.")

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1) by linear interpolation; the value itself for one run."""
        ordered = sorted(self.values)
        position = q * (len(ordered) - 1)
        below = int(position)
        above = min(below + 1, len(ordered) - 1)
        return ordered[below] + (ordered[above] - ordered[below]) * (position - below)

    def __add__(self, other: Runs) -> Runs:
        return Runs(values=self.values + other.values)


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(run: Callable[[], object], device: torch.device | None = None) -> float:
    """Seconds one call of ``run`` takes (CUDA work included when ``device`` is a CUDA device)."""
    _sync(device)
    start = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - start


def round_robin(
    variants: Mapping[str, Callable[[], object]],
    repeats: int,
    device: torch.device | None = None,
    warmups: Mapping[str, Callable[[], object] | None] | None = None,
) -> dict[str, Runs]:
    """Time each variant ``repeats`` times, in turn, after one warm-up call each.

    ``warmups`` replaces a variant's warm-up by a cheaper call, or by none (None), e.g. where an earlier
    warm-up already ran the same kernels.
    """
    for name, run in variants.items():
        warmup = (warmups or {}).get(name, run)
        if warmup is not None:
            warmup()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            times[name].append(time_call(run, device))
    return {name: Runs(values=tuple(values)) for name, values in times.items()}


def _status_kib(field: str) -> int | None:
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return None


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (Linux VmHWM; ru_maxrss elsewhere)."""
    kib = _status_kib("VmHWM")
    return kib * 1024 if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Restart the peak-RSS count at the current RSS (Linux ``clear_refs``); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def into_anonymous_memory(module: torch.nn.Module) -> None:
    """Copy every tensor of ``module`` that is backed by a memory-mapped checkpoint into ordinary memory.

    ``from_pretrained`` and ``safe_open`` leave CPU weights as views of the mapped safetensors files. Those
    pages are evictable cache: when another process on a shared machine needs memory, the kernel drops
    them and the next forward pass reads the weights from disk again, so timings measure the disk. Copies
    in anonymous memory stay resident (one tensor at a time, so the peak grows by one tensor at most).
    """
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.device.type == "cpu":
                tensor.data = tensor.data.clone()


def rss_bytes() -> int:
    """The process's resident set size now (0 where /proc is missing)."""
    kib = _status_kib("VmRSS")
    return (kib or 0) * 1024


def matmul_tflops(dtype: torch.dtype, device: torch.device, size: int = 2048, repeats: int = 5) -> Runs:
    """TFLOP/s of a square ``size`` matmul in ``dtype``: what the machine's dense kernels reach here."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    runs = round_robin({"matmul": lambda: a @ b}, repeats, device)["matmul"]
    return Runs(values=tuple(2 * size**3 / seconds / 1e12 for seconds in runs.values))
