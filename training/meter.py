"""What the training loop measures per window of steps (losses, head accuracies, speed) and how it logs it."""

from __future__ import annotations

import time
from typing import Any

import torch

from psaguard.training.config import TrainConfig
from psaguard.training.objective import StepOutput

__all__ = ["Meter", "autocast", "format_record"]


def autocast(cfg: TrainConfig, device: torch.device) -> torch.autocast:
    """bf16 autocast on ``device`` when ``cfg.mixed_precision`` asks for it."""
    # Autocast here rather than through accelerate's mixed_precision, which is process-global and cannot
    # change between two runs in one process.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16")


class Meter:
    """Sums over a window of micro-batches, averaged (across processes too) when flushed."""

    # loss, lm_loss, head_loss (per-micro-batch means), level hits, type hits, examples, micro-batches
    _FIELDS = 7

    def __init__(self) -> None:
        self.sums = torch.zeros(self._FIELDS, dtype=torch.float64)
        self.restart_clock()

    def restart_clock(self) -> None:
        self.started = time.perf_counter()

    def add(self, out: StepOutput) -> None:
        values = (out.loss, out.lm_loss, out.head_loss, out.level_correct, out.type_correct, out.count, 1)
        self.sums += torch.tensor(
            [float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for v in values], dtype=torch.float64
        )

    def flush(self, accelerator: Any) -> dict[str, float]:
        totals = accelerator.reduce(self.sums.to(accelerator.device), reduction="sum").cpu()
        loss, lm, head, level, kind, count, batches = totals.tolist()
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        batches, count = max(batches, 1.0), max(count, 1.0)
        record = {
            "loss": loss / batches,
            "lm_loss": lm / batches,
            "head_loss": head / batches,
            "level_acc": level / count,
            "type_acc": kind / count,
            "samples_per_s": count / elapsed,
        }
        if torch.cuda.is_available():
            record["gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        self.sums.zero_()
        self.restart_clock()
        return record


def format_record(record: dict[str, float], total: int) -> str:
    """A log line: 'step N/total | key value | ...'."""
    rest = (f"{key} {value:.4g}" for key, value in record.items() if key != "step")
    return " | ".join([f"step {int(record['step'])}/{total}", *rest])
