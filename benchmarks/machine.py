"""What a benchmark ran on: CPU or GPU model, the CPU's instruction sets, cores, memory, load, versions, date."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers

from psaguard.dtypes import choose_dtype, cpu_flags

__all__ = ["INSTRUCTION_SETS", "describe_machine", "instruction_sets"]

INSTRUCTION_SETS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")
"""The CPU flags that decide how fast torch's float32 / bfloat16 / float16 kernels are."""


def instruction_sets(flags: frozenset[str]) -> str:
    """Which of :data:`INSTRUCTION_SETS` ``flags`` has, and torch's CPU capability: ``avx2 avx512f (torch: AVX512)``."""
    found = " ".join(name for name in INSTRUCTION_SETS if name in flags) or "none of " + " ".join(INSTRUCTION_SETS)
    return f"{found} (torch: {torch.backends.cpu.get_cpu_capability()})"


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    total = next(line for line in meminfo.read_text().splitlines() if line.startswith("MemTotal:"))
    return int(total.split()[1]) / 2**20


def describe_machine() -> dict[str, Any]:
    """A JSON-ready description of this machine and the moment (UTC), for a benchmark's report."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    flags = cpu_flags()
    return {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "cpu": _cpu_model(),
        "instruction_sets": instruction_sets(flags),
        "cpu_bfloat16": choose_dtype("cpu", torch.bfloat16, flags).model_dump(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpu": gpu,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
    }
