"""PNG plots of training curves, confusion matrices and reliability diagrams.

Figures are made with matplotlib's object API on the Agg canvas, never through ``pyplot``, so plotting
neither needs a display nor changes matplotlib's global backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from psaguard.serialization import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from psaguard.training.evaluate import ReliabilityBin

__all__ = ["plot_confusion", "plot_history", "plot_reliability"]


def plot_history(history: Sequence[Mapping[str, float]], path: str | Path) -> Path:
    """Losses (left) and head accuracies (right) against the step, training and evaluation."""
    figure = _figure(11, 4)
    losses, accuracy = figure.subplots(1, 2)
    train = [r for r in history if "loss" in r]
    evals = [r for r in history if "eval_loss" in r]
    for key, style in (("loss", "-"), ("lm_loss", "--"), ("head_loss", ":")):
        losses.plot([r["step"] for r in train], [r[key] for r in train], style, label=f"train {key}")
    for key, marker in (("eval_loss", "o"), ("eval_lm_loss", "s"), ("eval_head_loss", "^")):
        losses.plot([r["step"] for r in evals], [r[key] for r in evals], marker + "-", label=key)
    for key in ("level_acc", "type_acc"):
        accuracy.plot([r["step"] for r in train], [r[key] for r in train], label=f"train {key}")
        accuracy.plot([r["step"] for r in evals], [r[f"eval_{key}"] for r in evals], "o-", label=f"eval {key}")
    losses.set(xlabel="step", ylabel="loss", title="losses")
    accuracy.set(xlabel="step", ylabel="accuracy", title="safety head accuracy", ylim=(0, 1.02))
    for axes in (losses, accuracy):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    return _save(figure, path)


def plot_confusion(matrix: Sequence[Sequence[int]], codes: Sequence[str], path: str | Path, title: str) -> Path:
    """A confusion matrix (rows: true class, columns: predicted) with counts in the cells."""
    size = 2.0 + 0.6 * len(codes)
    figure = _figure(size + 1, size)
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes)
    ticks = range(len(codes))
    axes.set_xticks(ticks, codes, rotation=45, ha="right")
    axes.set_yticks(ticks, codes)
    axes.set(xlabel="predicted", ylabel="true", title=f"confusion: {title}")
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            axes.text(j, i, str(count), ha="center", va="center", color="white" if count > peak / 2 else "black")
    return _save(figure, path)


def plot_reliability(bins: Sequence[ReliabilityBin], path: str | Path, title: str) -> Path:
    """Accuracy against confidence per bin, with the diagonal of perfect calibration."""
    figure = _figure(5, 5)
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    filled = [b for b in bins if b.count]
    axes.bar(
        [(b.lower + b.upper) / 2 for b in filled],
        [b.accuracy for b in filled],
        width=[b.upper - b.lower for b in filled],
        edgecolor="black",
        alpha=0.7,
        label="accuracy",
    )
    axes.plot([b.confidence for b in filled], [b.accuracy for b in filled], "o", color="red", label="bin mean")
    axes.set(xlabel="confidence", ylabel="accuracy", title=f"reliability: {title}", xlim=(0, 1), ylim=(0, 1))
    axes.legend(fontsize=8)
    return _save(figure, path)


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
