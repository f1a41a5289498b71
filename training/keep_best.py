"""Keep-best and early stopping: remember the best evaluated step's weights, stop when it stops improving.

After every evaluation the loop hands the eval record to :class:`KeepBest`. An improvement (by more than
``min_delta``) snapshots the trainable tensors to CPU memory, as does an evaluation only as good as the best
with ``ties="latest"``; ``patience`` evaluations in a row without an improvement end the run. At the end the
loop copies the snapshot back, so the saved result is the best step, not the last. The snapshot travels in
resumable checkpoints, so a resumed run keeps the same best step.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from pydantic import BaseModel, ConfigDict, Field

from psaguard.training.config import EarlyStopping

__all__ = ["BestStep", "KeepBest", "higher_is_better"]

logger = logging.getLogger(__name__)


def higher_is_better(metric: str) -> bool:
    """True for scores (macro-F1), False for losses."""
    return metric == "macro_f1"


class BestStep(BaseModel):
    """The best evaluation so far (saved in the training state)."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(description="The eval metric compared, e.g. 'head_loss'.")
    value: float = Field(description="Its best value.")
    step: int = Field(description="Optimizer step of that evaluation.")
    evals_since: int = Field(0, description="Evaluations since then without improvement.")


class KeepBest:
    """Tracks one eval metric and a CPU copy of the trainable tensors at its best step.

    Args:
        settings: The config's early-stopping settings.
        metric: The resolved metric name (``eval_<metric>`` is read from each eval record).
        trainable: The tensors trained (and restored), by name.
        best: A best step restored from a checkpoint, with its ``weights``.
    """

    def __init__(
        self,
        settings: EarlyStopping,
        metric: str,
        trainable: Mapping[str, torch.Tensor],
        best: BestStep | None = None,
        weights: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        self.settings = settings
        self.metric = metric
        self.trainable = trainable
        # A best step is only worth keeping with its weights.
        self.best = best if weights is not None else None
        self.weights = dict(weights) if weights is not None else None

    def update(self, record: Mapping[str, float], step: int) -> bool:
        """Compare an eval record with the best so far; snapshot on improvement, or on a tie with
        ``ties="latest"``. Returns True when this step's weights were kept."""
        value = float(record[f"eval_{self.metric}"])
        sign = 1.0 if higher_is_better(self.metric) else -1.0
        if self.best is None or sign * (value - self.best.value) > self.settings.min_delta:
            self._snapshot(BestStep(metric=self.metric, value=value, step=step))
            return True
        self.best.evals_since += 1
        if self.settings.ties == "latest" and sign * (value - self.best.value) >= 0:
            self._snapshot(self.best.model_copy(update={"value": value, "step": step}))
            return True
        return False

    def _snapshot(self, best: BestStep) -> None:
        self.best = best
        self.weights = {name: t.detach().to("cpu", copy=True) for name, t in self.trainable.items()}

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` evaluations in a row did not improve."""
        patience = self.settings.patience
        return patience is not None and self.best is not None and self.best.evals_since >= patience

    def stop_reason(self) -> str:
        """Why the run stops early, for the log and the run summary."""
        assert self.best is not None
        return (
            f"eval_{self.metric} did not improve for {self.best.evals_since} evaluations "
            f"(patience {self.settings.patience}; best {self.best.value:.4g} at step {self.best.step})"
        )

    def restore(self) -> None:
        """Copy the best step's weights back into the trainable tensors (no-op before any evaluation)."""
        if self.weights is None:
            return
        with torch.no_grad():
            for name, tensor in self.trainable.items():
                tensor.copy_(self.weights[name].to(tensor.device))
