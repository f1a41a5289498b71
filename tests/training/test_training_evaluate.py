"""Evaluation metrics: per-class precision/recall/F1/FPR, confusion matrix, calibration, detection."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from psaguard.training.evaluate import detection_metrics, head_report


def test_per_class_metrics_and_confusion_matrix_match_hand_counts() -> None:
    labels = [0, 0, 0, 1, 1, 2]
    predicted = [0, 0, 1, 1, 0, 1]
    probs = np.eye(3)[predicted] * 0.7 + 0.1
    report = head_report(labels, probs, ["a", "b", "c"])
    assert report.confusion == [[2, 1, 0], [1, 1, 0], [0, 1, 0]]
    a, b, c = report.classes
    assert (a.precision, a.recall, a.fpr, a.support) == pytest.approx((2 / 3, 2 / 3, 1 / 3, 3))
    assert (b.precision, b.recall, b.fpr, b.predicted) == pytest.approx((1 / 3, 1 / 2, 2 / 4, 3))
    assert (c.precision, c.recall, c.f1, c.fpr) == (0.0, 0.0, 0.0, 0.0)
    assert report.accuracy == pytest.approx(3 / 6)
    assert report.macro_f1 == pytest.approx((2 / 3 + 0.4 + 0.0) / 3)


def test_ece_is_zero_when_confidence_equals_accuracy_and_large_when_overconfident() -> None:
    labels = [0] * 4 + [1] * 4
    calibrated = np.array([[0.75, 0.25]] * 4 + [[0.75, 0.25]] * 2 + [[0.25, 0.75]] * 2)  # 6 of 8 right at 0.75
    report = head_report(labels, calibrated, ["a", "b"], bins=4)
    assert report.ece == pytest.approx(0.0, abs=1e-9)
    assert sum(b.count for b in report.reliability) == 8 and report.reliability[3].accuracy == pytest.approx(0.75)
    overconfident = np.array([[1.0, 0.0]] * 8)  # confidence 1.0 lands in the top bin
    wrong = head_report(labels, overconfident, ["a", "b"], bins=4)
    assert wrong.ece == pytest.approx(0.5) and wrong.reliability[-1].count == 8


def test_detection_counts_flagged_risky_requests() -> None:
    metrics = detection_metrics([True, True, False, False, False], [True, False, True, False, False])
    assert (metrics.tp, metrics.fn, metrics.fp, metrics.tn) == (1, 1, 1, 2)
    assert (metrics.precision, metrics.recall, metrics.fpr) == pytest.approx((0.5, 0.5, 1 / 3))


def test_eval_reports_custom_categories_and_sweeps_with_them(guard, images, tmp_path) -> None:
    from category_helpers import negatives, scam_examples, scam_request, variant

    from psaguard.training.data import read_jsonl
    from psaguard.training.evaluate import evaluate_guard

    guard.add_category("scam", scam_examples(images), level=3, negatives=negatives(images), action="refuse")
    with torch.no_grad():  # the head says 'safe' to everything, so only the category flags
        for linear in (guard.modules.head.level_head, guard.modules.head.type_head):
            linear.weight.zero_()
            linear.bias.zero_()
        guard.modules.head.type_head.bias[guard.config.taxonomy.safe_type_id] = 20.0
    rows = [(scam_request(images)[0], "illegal", 3), (variant(images[0], 5), "illegal", 3)]
    rows += [(variant(images[1], 6), "safe", 0), (variant(images[2], 7), "safe", 0)]
    lines = []
    for index, (image, kind, level) in enumerate(rows):
        image.save(tmp_path / f"{index}.png")
        row = {"image": f"{index}.png", "prompt": "claim the prize", "response": "ok", "safe_level": level}
        lines.append(json.dumps({**row, "safe_type": kind}))
    (tmp_path / "data.jsonl").write_text("\n".join(lines))
    examples, _ = read_jsonl(tmp_path / "data.jsonl")
    report = evaluate_guard(guard, examples)
    assert report.custom_fire_rates == {"scam": {"illegal": 1.0, "safe": 0.0}}
    # the sweep re-decides with the categories: at the policy's own threshold it flags what the guard flagged
    at_default = next(point for point in report.threshold_sweep if point.threshold == 0.5)
    assert (at_default.flagged_unsafe, at_default.flagged_safe) == (report.detection.recall, report.detection.fpr)
    assert at_default.flagged_unsafe == 1.0
