"""PNG plots of training curves, confusion matrices and reliability diagrams.

Figures are made with matplotlib's object API on the Agg canvas, never through ``pyplot``, so plotting
neither needs a display nor changes matplotlib's global backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psaguard.checkpoints.serialization import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from psaguard.training.calibration import ReliabilityBin
    from psaguard.training.sweep import SweepPoint

__all__ = ["plot_bars", "plot_confusion", "plot_history", "plot_reliability", "plot_sweep"]


def plot_history(history: Sequence[Mapping[str, float]], path: str | Path) -> Path:
    """Losses (left) and head accuracies (right) against the step, training and evaluation."""
    figure = _figure(11, 4)
    losses, accuracy = figure.subplots(1, 2)
    train = [r for r in history if "loss" in r]
    evals = [r for r in history if "eval_loss" in r]
    for key, style in (("loss", "-"), ("lm_loss", "--"), ("head_loss", ":")):
        _curve(losses, train, key, style, f"train {key}")
    for key, marker in (("eval_loss", "o"), ("eval_lm_loss", "s"), ("eval_head_loss", "^")):
        _curve(losses, evals, key, marker + "-", key)
    for key in ("level_acc", "type_acc"):
        _curve(accuracy, train, key, "-", f"train {key}")
        _curve(accuracy, evals, f"eval_{key}", "o-", f"eval {key}")
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


def plot_reliability(
    bins: Sequence[ReliabilityBin], path: str | Path, title: str, before: Sequence[ReliabilityBin] | None = None
) -> Path:
    """Accuracy against confidence per bin, with the diagonal of perfect calibration.

    With ``before`` (the bins of the uncalibrated logits) both are drawn: before as an outline, after filled.
    """
    figure = _figure(5, 5)
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    if before is not None:
        outline = {"fill": False, "edgecolor": "darkorange", "linewidth": 1.5, "label": "accuracy, uncalibrated"}
        _reliability_bins(axes, before, outline, {"marker": "x", "color": "darkorange"})
    filled = {"edgecolor": "black", "alpha": 0.7, "label": "accuracy" if before is None else "accuracy, calibrated"}
    _reliability_bins(axes, bins, filled, {"marker": "o", "color": "red", "label": "bin mean"})
    axes.set(xlabel="confidence", ylabel="accuracy", title=f"reliability: {title}", xlim=(0, 1), ylim=(0, 1))
    axes.legend(fontsize=8)
    return _save(figure, path)


def _curve(axes: Any, records: Sequence[Mapping[str, float]], key: str, style: str, label: str) -> None:
    """``key`` of each record against its step."""
    axes.plot([r["step"] for r in records], [r[key] for r in records], style, label=label)


def _reliability_bins(
    axes: Any, bins: Sequence[ReliabilityBin], bar_style: dict[str, Any], mean_style: dict[str, Any]
) -> None:
    """The non-empty bins as bars of their accuracy, with a marker at each bin's mean confidence."""
    shown = [b for b in bins if b.count]
    width = [b.upper - b.lower for b in shown]
    axes.bar([(b.lower + b.upper) / 2 for b in shown], [b.accuracy for b in shown], width=width, **bar_style)
    axes.plot([b.confidence for b in shown], [b.accuracy for b in shown], linestyle="none", **mean_style)


def plot_sweep(points: Sequence[SweepPoint], path: str | Path, goals: tuple[float, float] | None = None) -> Path:
    """Flagged unsafe against flagged safe as the policy threshold varies (goals, if given, dotted)."""
    figure = _figure(4.5, 4)
    axes = figure.subplots()
    axes.plot([p.flagged_safe for p in points], [p.flagged_unsafe for p in points], marker="o")
    if points:
        ends = {points[0].threshold, points[-1].threshold, 0.5}  # the range and the default; the rest would crowd
        for p in (p for p in points if p.threshold in ends):
            axes.annotate(
                f"t={p.threshold:g}",
                (p.flagged_safe, p.flagged_unsafe),
                fontsize=8,
                xytext=(6, -4),
                textcoords="offset points",
            )
    if goals is not None:
        axes.axvline(goals[0], color="grey", linestyle=":", linewidth=1)
        axes.axhline(goals[1], color="grey", linestyle=":", linewidth=1)
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="flagged safe (over-refusal bound)", ylabel="flagged unsafe")
    axes.set_title("Policy threshold trade-off" + (" (goals dotted)" if goals is not None else ""))
    return _save(figure, path)


def plot_bars(
    values: Mapping[str, float], title: str, ylabel: str, path: str | Path, limit: float | None = 1.0
) -> Path:
    """One labelled bar per value (the y axis up to 1.1 x ``limit``, unless None)."""
    figure = _figure(max(3.5, 0.9 * len(values) + 1.5), 3.2)
    axes = figure.subplots()
    bars = axes.bar(list(values), list(values.values()), color="#4c72b0")
    axes.bar_label(bars, fmt="%.3f")
    if limit is not None:
        axes.set_ylim(0, limit * 1.1)
    axes.set(ylabel=ylabel, title=title)
    axes.tick_params(axis="x", rotation=20)
    return _save(figure, path)


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
