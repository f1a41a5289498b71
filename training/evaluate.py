"""Evaluating a guard's head on labelled data: per-class metrics, confusion matrices, calibration.

Predictions are the argmax of each head's probabilities (with the guard's temperatures). Detection
metrics score the policy's decision: a request counts as risky when its label has a level above 0 and
a type other than the safe type (the paper's intervention rule), and as flagged when the verdict is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from psaguard.guard import SafetyGuard
from psaguard.serialization import atomic_write_text
from psaguard.training.collate import load_example_image
from psaguard.training.data import DatasetReport, Example
from psaguard.training.metrics import binary_rates, one_vs_rest

__all__ = [
    "ClassMetrics",
    "DetectionMetrics",
    "EvalReport",
    "HeadReport",
    "ReliabilityBin",
    "detection_metrics",
    "evaluate_guard",
    "head_report",
    "write_report",
]

logger = logging.getLogger(__name__)


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


class ReliabilityBin(BaseModel):
    """Examples whose top probability falls in [lower, upper)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lower: float = Field(description="Lower edge of the confidence bin.")
    upper: float = Field(description="Upper edge of the confidence bin.")
    count: int = Field(description="Examples in the bin.")
    confidence: float = Field(description="Mean top probability in the bin (0 when empty).")
    accuracy: float = Field(description="Fraction of correct argmax predictions in the bin (0 when empty).")


class HeadReport(BaseModel):
    """Metrics of one head (level or type)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    accuracy: float = Field(description="Fraction of correct argmax predictions.")
    macro_f1: float = Field(description="Mean F1 over the classes that occur in labels or predictions.")
    classes: list[ClassMetrics] = Field(description="Per-class metrics, in class-id order.")
    confusion: list[list[int]] = Field(description="confusion[true][predicted] counts.")
    ece: float = Field(description="Expected calibration error of the top probability.")
    reliability: list[ReliabilityBin] = Field(description="Reliability diagram bins.")


class DetectionMetrics(BaseModel):
    """Risky-vs-safe detection by the policy's decision (flagged = any action but 'allow')."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tp: int = Field(description="Risky and flagged.")
    fp: int = Field(description="Safe but flagged.")
    tn: int = Field(description="Safe and allowed.")
    fn: int = Field(description="Risky but allowed.")
    precision: float = Field(description="TP / (TP + FP).")
    recall: float = Field(description="TP / (TP + FN).")
    f1: float = Field(description="Harmonic mean of precision and recall.")
    fpr: float = Field(description="FP / (FP + TN): how often safe requests are flagged.")


class EvalReport(BaseModel):
    """Everything ``psaguard eval`` measures; written as ``eval.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    examples: int = Field(description="Examples evaluated.")
    level: HeadReport = Field(description="Level head.")
    type: HeadReport = Field(description="Type head.")
    detection: DetectionMetrics = Field(description="Risky-vs-safe detection by the policy.")
    level_codes: list[str] = Field(description="Level codes, in id order.")
    type_codes: list[str] = Field(description="Type codes, in id order.")
    dataset: DatasetReport | None = Field(None, description="How the data file was read, if from a file.")

    def headline(self) -> dict[str, float | int]:
        """The numbers a console summary quotes, rounded to 4 places: macro-F1, flagged recall and FPR, ECE."""
        numbers = {
            "type_macro_f1": self.type.macro_f1,
            "level_macro_f1": self.level.macro_f1,
            "flagged_recall_unsafe": self.detection.recall,
            "flagged_fpr_safe": self.detection.fpr,
            "type_ece": self.type.ece,
            "level_ece": self.level.ece,
            "type_accuracy": self.type.accuracy,
            "level_accuracy": self.level.accuracy,
        }
        return {"examples": self.examples, **{key: round(value, 4) for key, value in numbers.items()}}


def evaluate_guard(
    guard: SafetyGuard,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    bins: int = 10,
    dataset: DatasetReport | None = None,
) -> EvalReport:
    """Classify every example with ``guard`` (image + first user turn) and score the head and the policy."""
    taxonomy = guard.config.taxonomy
    level_probs, type_probs, flagged = [], [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        images = [load_example_image(e, guard.config.max_image_pixels) for e in chunk]
        for verdict in guard.classify_batch(images, [e.prompt for e in chunk]):
            level_probs.append([verdict.level_probs[lv.code] for lv in taxonomy.levels])
            type_probs.append([verdict.type_probs[t.code] for t in taxonomy.types])
            flagged.append(verdict.flagged)
    safe_type = taxonomy.safe_type_id
    risky = [e.level > 0 and e.type != safe_type for e in examples]
    level_codes = [lv.code for lv in taxonomy.levels]
    type_codes = [t.code for t in taxonomy.types]
    return EvalReport(
        examples=len(examples),
        level=head_report([e.level for e in examples], np.asarray(level_probs), level_codes, bins),
        type=head_report([e.type for e in examples], np.asarray(type_probs), type_codes, bins),
        detection=detection_metrics(risky, flagged),
        level_codes=level_codes,
        type_codes=type_codes,
        dataset=dataset,
    )


def head_report(labels: Sequence[int], probs: np.ndarray, codes: Sequence[str], bins: int = 10) -> HeadReport:
    """Metrics of one head from true labels (N,) and predicted probabilities (N, C)."""
    labels_arr = np.asarray(labels, dtype=np.int64)
    predicted = probs.argmax(axis=1)
    num_classes = len(codes)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels_arr, predicted), 1)
    classes = []
    for code, (tp, fp, tn, fn) in zip(codes, one_vs_rest(confusion.tolist())):
        precision, recall, f1, fpr = binary_rates(tp, fp, tn, fn)
        classes.append(
            ClassMetrics(
                code=code,
                support=tp + fn,
                predicted=tp + fp,
                precision=precision,
                recall=recall,
                f1=f1,
                fpr=fpr,
            )
        )
    present = [c.f1 for c in classes if c.support or c.predicted]
    reliability, ece = _calibration(probs.max(axis=1), predicted == labels_arr, bins)
    return HeadReport(
        accuracy=float((predicted == labels_arr).mean()) if len(labels_arr) else 0.0,
        macro_f1=float(np.mean(present)) if present else 0.0,
        classes=classes,
        confusion=confusion.tolist(),
        ece=ece,
        reliability=reliability,
    )


def detection_metrics(risky: Sequence[bool], flagged: Sequence[bool]) -> DetectionMetrics:
    """Binary metrics of flagging risky requests."""
    truth, pred = np.asarray(risky, dtype=bool), np.asarray(flagged, dtype=bool)
    tp, fp = int((truth & pred).sum()), int((~truth & pred).sum())
    tn, fn = int((~truth & ~pred).sum()), int((truth & ~pred).sum())
    precision, recall, f1, fpr = binary_rates(tp, fp, tn, fn)
    return DetectionMetrics(tp=tp, fp=fp, tn=tn, fn=fn, precision=precision, recall=recall, f1=f1, fpr=fpr)


def _calibration(confidence: np.ndarray, correct: np.ndarray, bins: int) -> tuple[list[ReliabilityBin], float]:
    edges = np.linspace(0.0, 1.0, bins + 1)
    # The top bin is closed so that a confidence of exactly 1.0 is counted.
    which = np.clip(np.digitize(confidence, edges[1:-1], right=False), 0, bins - 1)
    result, ece = [], 0.0
    for index in range(bins):
        members = which == index
        count = int(members.sum())
        conf = float(confidence[members].mean()) if count else 0.0
        acc = float(correct[members].mean()) if count else 0.0
        ece += count / max(len(confidence), 1) * abs(acc - conf)
        result.append(
            ReliabilityBin(
                lower=float(edges[index]), upper=float(edges[index + 1]), count=count, confidence=conf, accuracy=acc
            )
        )
    return result, ece


def write_report(report: EvalReport, directory: str | Path, *, plots: bool = True) -> list[Path]:
    """Write ``eval.json`` and (with ``plots``) confusion-matrix and reliability PNGs; return the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = [atomic_write_text(directory / "eval.json", json.dumps(report.model_dump(), indent=2) + "\n")]
    if plots:
        from psaguard.training.plots import plot_confusion, plot_reliability

        for name, head, codes in (
            ("level", report.level, report.level_codes),
            ("type", report.type, report.type_codes),
        ):
            written.append(plot_confusion(head.confusion, codes, directory / f"confusion_{name}.png", f"{name} head"))
            written.append(plot_reliability(head.reliability, directory / f"reliability_{name}.png", f"{name} head"))
    return written
