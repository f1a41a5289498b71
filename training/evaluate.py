"""Evaluating a guard's head on labelled data: per-class metrics, confusion matrices, calibration.

Predictions are the argmax of each head's probabilities (with the guard's temperatures). Detection
metrics score the policy's decision: a request counts as risky when its label has a level above 0 and
a type other than the safe type (the paper's intervention rule), and as flagged when the verdict is.
Calibration is reported twice, for the raw logits (T = 1) and with the guard's temperatures, and the
policy-threshold sweep shows the share of risky and safe rows acted on at each threshold. Rows that label
their answer (``response_harmful``/``response_level``) are also judged with ``guard.classify_response_batch``
when the guard has a response head: the response side's precision, recall, F1, FPR and the ECE of its harm
probability are in ``EvalReport.response``.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from psaguard.categories.config import FIRE_AT
from psaguard.checkpoints.serialization import atomic_write_text
from psaguard.guard import SafetyGuard
from psaguard.taxonomy import Taxonomy
from psaguard.training.calibration import ReliabilityBin, reliability, softmax
from psaguard.training.collate import load_example_image
from psaguard.training.data import DatasetReport, Example
from psaguard.training.metrics import (
    ClassMetrics,
    binary_rates,
    class_metrics,
    confusion_matrix,
    macro_f1_of,
)
from psaguard.training.predict import Predictions, predict
from psaguard.training.sweep import DEFAULT_SWEEP, SweepPoint, threshold_sweep
from psaguard.verdict import ResponseVerdict, SafetyVerdict

__all__ = [
    "ClassMetrics",
    "DetectionMetrics",
    "EvalReport",
    "HeadReport",
    "ReliabilityBin",
    "ResponseReport",
    "custom_fire_rates",
    "detection_metrics",
    "evaluate_guard",
    "evaluate_predictions",
    "evaluate_responses",
    "head_report",
    "risky_labels",
    "write_report",
]

logger = logging.getLogger(__name__)


class HeadReport(BaseModel):
    """Metrics of one head (level or type)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    accuracy: float = Field(description="Fraction of correct argmax predictions.")
    macro_f1: float = Field(description="Mean F1 over the classes that occur in labels or predictions.")
    classes: list[ClassMetrics] = Field(description="Per-class metrics, in class-id order.")
    confusion: list[list[int]] = Field(description="confusion[true][predicted] counts.")
    ece: float = Field(description="Expected calibration error of the top probability (guard's temperature).")
    reliability: list[ReliabilityBin] = Field(description="Reliability diagram bins (guard's temperature).")
    temperature: float = Field(1.0, description="The guard's softmax temperature of this head.")
    ece_uncalibrated: float | None = Field(None, description="ECE of the raw logits (temperature 1).")
    reliability_uncalibrated: list[ReliabilityBin] | None = Field(
        None, description="Reliability diagram bins of the raw logits (temperature 1)."
    )


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


class ResponseReport(BaseModel):
    """The response side: harmful-vs-harmless answers by the response policy's decision (flagged = not 'allow')."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    examples: int = Field(description="Rows that label their answer.")
    detection: DetectionMetrics = Field(description="Harmful answers flagged, harmless ones allowed.")
    ece: float = Field(description="Expected calibration error of the answer's harm probability (two classes).")
    type_accuracy: float = Field(description="Of the harmful answers, the share whose type is predicted right.")


class EvalReport(BaseModel):
    """Everything ``psaguard eval`` measures; written as ``eval.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    examples: int = Field(description="Examples evaluated.")
    level: HeadReport = Field(description="Level head.")
    type: HeadReport = Field(description="Type head.")
    detection: DetectionMetrics = Field(description="Risky-vs-safe detection by the policy.")
    threshold_sweep: list[SweepPoint] = Field(
        default_factory=list, description="Shares of risky and safe rows flagged at each policy level threshold."
    )
    level_codes: list[str] = Field(description="Level codes, in id order.")
    type_codes: list[str] = Field(description="Type codes, in id order.")
    dataset: DatasetReport | None = Field(None, description="How the data file was read, if from a file.")
    custom_fire_rates: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="For each custom category of the guard (psaguard.categories): the share of the rows of each "
        "labelled type on which it fires (probability >= 0.5). Empty for a guard without categories.",
    )
    response: ResponseReport | None = Field(
        None, description="The response side, when rows label their answers and the guard has a response head."
    )

    def headline(self) -> dict[str, float | int]:
        """The numbers a console summary quotes, rounded to 4 places: macro-F1, flagged recall and FPR, ECE
        (with the guard's temperatures, and of the raw logits when measured)."""
        numbers = {
            "type_macro_f1": self.type.macro_f1,
            "level_macro_f1": self.level.macro_f1,
            "flagged_recall_unsafe": self.detection.recall,
            "flagged_fpr_safe": self.detection.fpr,
            "type_ece": self.type.ece,
            "level_ece": self.level.ece,
            **({"type_ece_uncalibrated": self.type.ece_uncalibrated} if self.type.ece_uncalibrated is not None else {}),
            **(
                {"level_ece_uncalibrated": self.level.ece_uncalibrated}
                if self.level.ece_uncalibrated is not None
                else {}
            ),
            "type_accuracy": self.type.accuracy,
            "level_accuracy": self.level.accuracy,
        }
        if self.response is not None:
            numbers |= {
                "response_f1": self.response.detection.f1,
                "response_precision": self.response.detection.precision,
                "response_recall": self.response.detection.recall,
                "response_fpr": self.response.detection.fpr,
                "response_ece": self.response.ece,
            }
        return {"examples": self.examples, **{key: round(value, 4) for key, value in numbers.items()}}


def evaluate_guard(
    guard: SafetyGuard,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    bins: int = 10,
    dataset: DatasetReport | None = None,
    thresholds: Sequence[float] = DEFAULT_SWEEP,
) -> EvalReport:
    """Classify every example with ``guard`` (image + judged text) and score the head and the policy."""
    predictions = predict(guard, examples, batch_size)
    report = evaluate_predictions(guard, examples, predictions, bins=bins, dataset=dataset, thresholds=thresholds)
    if not guard.classifier.has_response_head or not any(e.has_response_labels for e in examples):
        return report
    return report.model_copy(update={"response": evaluate_responses(guard, examples, batch_size=batch_size, bins=bins)})


def evaluate_responses(
    guard: SafetyGuard, examples: Sequence[Example], *, batch_size: int = 16, bins: int = 10
) -> ResponseReport:
    """Judge the answers of the examples that label theirs with ``guard.classify_response_batch`` and score them.

    Raises :class:`~psaguard.errors.ResponseHeadMissingError` for a guard without a response head.
    """
    labelled = [e for e in examples if e.has_response_labels]
    verdicts = _judge_responses(guard, labelled, batch_size)
    harmful = [(e.response_level or 0) > 0 for e in labelled]
    probs = np.asarray([[1.0 - v.harm_prob, v.harm_prob] for v in verdicts], dtype=np.float64).reshape(-1, 2)
    _, ece = reliability(probs, [int(h) for h in harmful], bins)
    return ResponseReport(
        examples=len(labelled),
        detection=detection_metrics(harmful, [v.flagged for v in verdicts]),
        ece=ece,
        type_accuracy=_type_accuracy(verdicts, labelled, harmful),
    )


def _judge_responses(guard: SafetyGuard, examples: Sequence[Example], batch_size: int) -> list[ResponseVerdict]:
    verdicts: list[ResponseVerdict] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        images = [load_example_image(e, guard.classifier.config.max_image_pixels) for e in chunk]
        verdicts += guard.classify_response_batch(images, [e.prompt for e in chunk], [e.response for e in chunk])
    return verdicts


def _type_accuracy(verdicts: Sequence[ResponseVerdict], examples: Sequence[Example], harmful: Sequence[bool]) -> float:
    """The share of harmful answers whose judged risk type is the labelled one (0 when there is none)."""
    typed = [v.type.id == e.response_type for v, e, h in zip(verdicts, examples, harmful) if h]
    return sum(typed) / len(typed) if typed else 0.0


def evaluate_predictions(
    guard: SafetyGuard,
    examples: Sequence[Example],
    predictions: Predictions,
    *,
    bins: int = 10,
    dataset: DatasetReport | None = None,
    thresholds: Sequence[float] = DEFAULT_SWEEP,
) -> EvalReport:
    """Score ``guard``'s :func:`~psaguard.training.predict.predict` output on ``examples`` (the head and the policy)."""
    taxonomy = guard.classifier.config.taxonomy
    risky = risky_labels(examples, taxonomy)
    level_codes = [lv.code for lv in taxonomy.levels]
    type_codes = [t.code for t in taxonomy.types]
    level = head_report([e.level for e in examples], predictions.probs("level"), level_codes, bins)
    kind = head_report([e.type for e in examples], predictions.probs("type"), type_codes, bins)
    return EvalReport(
        examples=len(examples),
        level=_with_uncalibrated(level, predictions.level_logits, [e.level for e in examples], guard, "level", bins),
        type=_with_uncalibrated(kind, predictions.type_logits, [e.type for e in examples], guard, "type", bins),
        detection=detection_metrics(risky, predictions.flagged),
        threshold_sweep=threshold_sweep(
            predictions.verdicts, risky, guard.policy, taxonomy, thresholds, categories=guard.categories
        ),
        level_codes=level_codes,
        type_codes=type_codes,
        dataset=dataset,
        custom_fire_rates=custom_fire_rates(predictions.verdicts, [type_codes[e.type] for e in examples]),
    )


def risky_labels(examples: Sequence[Example], taxonomy: Taxonomy) -> list[bool]:
    """Whether each example's label calls for an intervention: a level above 0 and a type other than safe."""
    safe_type = taxonomy.safe_type_id
    return [e.level > 0 and e.type != safe_type for e in examples]


def custom_fire_rates(verdicts: Sequence[SafetyVerdict], labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """For each custom category in the verdicts' ``custom_scores``: the share of each label's rows it fires on."""
    rates: dict[str, dict[str, float]] = {}
    for code in verdicts[0].custom_scores if verdicts else ():
        rates[code] = {
            label: statistics.mean(v.custom_scores[code] >= FIRE_AT for v, own in zip(verdicts, labels) if own == label)
            for label in sorted(set(labels))
        }
    return rates


def _with_uncalibrated(
    report: HeadReport, logits: np.ndarray, labels: Sequence[int], guard: SafetyGuard, head: str, bins: int
) -> HeadReport:
    """``report`` plus the head's temperature and the calibration of its raw logits."""
    bins_raw, ece_raw = reliability(softmax(logits), labels, bins)
    temperature = getattr(guard.classifier.config.head, f"{head}_temperature")
    update = {"temperature": temperature, "ece_uncalibrated": ece_raw, "reliability_uncalibrated": bins_raw}
    return report.model_copy(update=update)


def head_report(labels: Sequence[int], probs: np.ndarray, codes: Sequence[str], bins: int = 10) -> HeadReport:
    """Metrics of one head from true labels (N,) and predicted probabilities (N, C)."""
    labels_arr = np.asarray(labels, dtype=np.int64)
    predicted = probs.argmax(axis=1)
    confusion = confusion_matrix(labels_arr.tolist(), predicted.tolist(), len(codes))
    bins_cal, ece = reliability(probs, labels_arr, bins)
    return HeadReport(
        accuracy=float((predicted == labels_arr).mean()) if len(labels_arr) else 0.0,
        macro_f1=macro_f1_of(confusion),
        classes=class_metrics(confusion, codes),
        confusion=confusion,
        ece=ece,
        reliability=bins_cal,
    )


def detection_metrics(risky: Sequence[bool], flagged: Sequence[bool]) -> DetectionMetrics:
    """Binary metrics of flagging risky requests."""
    truth, pred = np.asarray(risky, dtype=bool), np.asarray(flagged, dtype=bool)
    tp, fp = int((truth & pred).sum()), int((~truth & pred).sum())
    tn, fn = int((~truth & ~pred).sum()), int((truth & ~pred).sum())
    precision, recall, f1, fpr = binary_rates(tp, fp, tn, fn)
    return DetectionMetrics(tp=tp, fp=fp, tn=tn, fn=fn, precision=precision, recall=recall, f1=f1, fpr=fpr)


def write_report(report: EvalReport, directory: str | Path, *, plots: bool = True) -> list[Path]:
    """Write ``eval.json`` and (with ``plots``) confusion-matrix and reliability PNGs; return the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = [atomic_write_text(directory / "eval.json", json.dumps(report.model_dump(), indent=2) + "\n")]
    if plots:
        from psaguard.training.plots import plot_confusion, plot_reliability, plot_sweep

        for name, head, codes in (
            ("level", report.level, report.level_codes),
            ("type", report.type, report.type_codes),
        ):
            written.append(plot_confusion(head.confusion, codes, directory / f"confusion_{name}.png", f"{name} head"))
            written.append(
                plot_reliability(
                    head.reliability,
                    directory / f"reliability_{name}.png",
                    f"{name} head",
                    before=head.reliability_uncalibrated if head.temperature != 1.0 else None,
                )
            )
        written.append(plot_sweep(report.threshold_sweep, directory / "threshold_sweep.png"))
    return written
