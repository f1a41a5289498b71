"""Classification rates shared by ``psaguard eval`` and the synthetic-world report (no torch needed)."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ClassMetrics",
    "binary_rates",
    "class_metrics",
    "confusion_matrix",
    "macro_f1",
    "macro_f1_of",
    "one_vs_rest",
]


class ClassMetrics(BaseModel):
    """One-vs-rest metrics of one class."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str = Field(description="Class code.")
    support: int = Field(description="Examples whose label is this class.")
    predicted: int = Field(description="Examples predicted as this class.")
    precision: float = Field(description="TP / (TP + FP); 0 when nothing is predicted as this class.")
    recall: float = Field(description="TP / (TP + FN); 0 when the class has no example.")
    f1: float = Field(description="Harmonic mean of precision and recall.")
    fpr: float = Field(description="False-positive rate FP / (FP + TN).")


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


def class_metrics(confusion: Sequence[Sequence[int]], codes: Sequence[str]) -> list[ClassMetrics]:
    """:class:`ClassMetrics` of each class of a square ``confusion[true][predicted]`` matrix, in class order."""
    metrics = []
    for code, (tp, fp, tn, fn) in zip(codes, one_vs_rest(confusion)):
        precision, recall, f1, fpr = binary_rates(tp, fp, tn, fn)
        metrics.append(
            ClassMetrics(
                code=code, support=tp + fn, predicted=tp + fp, precision=precision, recall=recall, f1=f1, fpr=fpr
            )
        )
    return metrics


def confusion_matrix(labels: Sequence[int], predicted: Sequence[int], num_classes: int) -> list[list[int]]:
    """``confusion[true][predicted]`` counts of ``num_classes`` classes."""
    confusion = [[0] * num_classes for _ in range(num_classes)]
    for truth, guess in zip(labels, predicted):
        confusion[truth][guess] += 1
    return confusion


def macro_f1_of(confusion: Sequence[Sequence[int]], *, supported_only: bool = False) -> float:
    """Mean one-vs-rest F1 over the classes that occur in the labels or the predictions (0 when none does).

    With ``supported_only``, over the classes that occur in the labels only (the synthetic-world report's
    measure: a class no row has does not count, even when it is predicted).
    """
    scores = [
        binary_rates(*counts)[2]
        for counts in one_vs_rest(confusion)
        if counts[0] + counts[3] or (not supported_only and counts[1])
    ]
    return sum(scores) / len(scores) if scores else 0.0


def macro_f1(labels: Sequence[int], predicted: Sequence[int]) -> float:
    """:func:`macro_f1_of` the confusion matrix of ``labels`` and ``predicted`` class ids."""
    num_classes = max([*labels, *predicted], default=-1) + 1
    return macro_f1_of(confusion_matrix(labels, predicted, num_classes))
