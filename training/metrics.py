"""Classification rates shared by ``psaguard eval`` and the synthetic-world report (no torch needed)."""

from __future__ import annotations

__all__ = ["binary_rates"]


def binary_rates(tp: int, fp: int, tn: int, fn: int) -> tuple[float, float, float, float]:
    """(precision, recall, F1, false-positive rate) from one-vs-rest counts; 0 where a ratio is undefined."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    fpr = fp / (fp + tn) if fp + tn else 0.0
    return precision, recall, f1, fpr
