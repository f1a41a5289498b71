"""Classification rates shared by ``psaguard eval`` and the synthetic-world report (no torch needed)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["binary_rates", "one_vs_rest"]


def binary_rates(tp: int, fp: int, tn: int, fn: int) -> tuple[float, float, float, float]:
    """(precision, recall, F1, false-positive rate) from one-vs-rest counts; 0 where a ratio is undefined."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    fpr = fp / (fp + tn) if fp + tn else 0.0
    return precision, recall, f1, fpr


def one_vs_rest(confusion: Sequence[Sequence[int]]) -> list[tuple[int, int, int, int]]:
    """(TP, FP, TN, FN) of each class of a square ``confusion[true][predicted]`` matrix, in class order."""
    total = sum(sum(row) for row in confusion)
    counts = []
    for k, row in enumerate(confusion):
        tp = int(row[k])
        fn = int(sum(row)) - tp
        fp = int(sum(other[k] for other in confusion)) - tp
        counts.append((tp, fp, total - tp - fp - fn, fn))
    return counts
