"""Classification rates shared by ``psaguard eval`` and the synthetic-world report (no torch needed)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["binary_rates", "confusion_matrix", "macro_f1", "macro_f1_of", "one_vs_rest"]


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


def confusion_matrix(labels: Sequence[int], predicted: Sequence[int], num_classes: int) -> list[list[int]]:
    """``confusion[true][predicted]`` counts of ``num_classes`` classes."""
    confusion = [[0] * num_classes for _ in range(num_classes)]
    for truth, guess in zip(labels, predicted):
        confusion[truth][guess] += 1
    return confusion


def macro_f1_of(confusion: Sequence[Sequence[int]]) -> float:
    """Mean one-vs-rest F1 over the classes that occur in the labels or the predictions (0 when none does)."""
    scores = [binary_rates(*counts)[2] for counts in one_vs_rest(confusion) if counts[0] + counts[1] + counts[3]]
    return sum(scores) / len(scores) if scores else 0.0


def macro_f1(labels: Sequence[int], predicted: Sequence[int]) -> float:
    """:func:`macro_f1_of` the confusion matrix of ``labels`` and ``predicted`` class ids."""
    num_classes = max([*labels, *predicted], default=-1) + 1
    return macro_f1_of(confusion_matrix(labels, predicted, num_classes))
