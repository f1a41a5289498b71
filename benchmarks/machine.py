"""What a benchmark ran on: CPU or GPU model, the CPU's instruction sets, cores, memory, load, versions, date."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers

from psaguard.dtypes import choose_dtype, cpu_flags, cpu_model, instruction_sets

__all__ = ["describe_machine"]


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
        "cpu": cpu_model(),
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
