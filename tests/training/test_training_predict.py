"""``predict`` runs the head once per batch and keeps the logits the verdicts came from; calibration returns a
new guard and leaves the caller's as it was."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from psaguard.training.calibration import MIN_TEMPERATURE, apply_calibration, calibrated_guard
from psaguard.training.data import read_jsonl
from psaguard.training.predict import predict


def _count_head_calls(guard) -> list[int]:
    calls = [0]

    def hook(*_args) -> None:
        calls[0] += 1

    guard.modules.head.register_forward_hook(hook)
    return calls


def test_predict_runs_the_head_once_per_batch_and_keeps_the_verdicts_logits(guard, toy_data) -> None:
    examples, _ = read_jsonl(toy_data["test"])
    calls = _count_head_calls(guard)
    predictions = predict(guard, examples, batch_size=4)
    assert calls[0] == 2  # 8 examples, 2 batches: one head pass each (was two)
    assert predictions.level_logits.shape == (8, guard.config.taxonomy.num_levels)
    # The probabilities the policy acted on are the softmax of the logits carried with them.
    level_probs = torch.softmax(torch.from_numpy(predictions.level_logits), dim=-1).numpy()
    np.testing.assert_allclose(predictions.probs("level"), level_probs, atol=1e-5)
    type_probs = torch.softmax(torch.from_numpy(predictions.type_logits), dim=-1).numpy()
    np.testing.assert_allclose(predictions.probs("type"), type_probs, atol=1e-5)


def test_calibration_returns_a_new_guard_and_leaves_the_callers_unchanged(guard, toy_data) -> None:
    examples, _ = read_jsonl(toy_data["test"])
    config, classifier = guard.config, guard.classifier
    calibrated, result = calibrated_guard(guard, examples, batch_size=8)
    assert guard.classifier is classifier and guard.config == config  # the caller's guard is as it was
    assert calibrated is not guard and calibrated.modules is guard.modules
    head = calibrated.config.head
    assert (head.level_temperature, head.type_temperature) == (result.level.temperature, result.type.temperature)
    assert calibrated.config.model_copy(update={"head": config.head}) == config  # only the temperatures differ


def test_apply_calibration_is_deprecated_and_still_switches_the_guard(guard, toy_data) -> None:
    examples, _ = read_jsonl(toy_data["test"])
    with pytest.warns(DeprecationWarning, match="calibrated_guard"):
        result = apply_calibration(guard, examples, batch_size=8)
    assert guard.config.head.level_temperature == result.level.temperature


def test_a_fit_stopped_at_its_bound_is_flagged_and_logged(guard, toy_data, caplog) -> None:
    examples, _ = read_jsonl(toy_data["test"])
    predictions = predict(guard, examples, batch_size=8)
    levels, types = predictions.level_logits.argmax(1), predictions.type_logits.argmax(1)
    # rows labelled with the head's own answers: every one right, so sharpening without end lowers their NLL
    agreeing = [replace(e, level=int(lv), type=int(ty)) for e, lv, ty in zip(examples, levels, types)]
    with caplog.at_level("WARNING", logger="psaguard.training.calibration"):
        _, result = calibrated_guard(guard, agreeing, batch_size=8)
    assert result.level.at_bound and result.type.at_bound
    assert result.level.temperature == pytest.approx(MIN_TEMPERATURE, rel=0.02)
    assert "type head's temperature" in caplog.text and "search bound" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="psaguard.training.calibration"):
        _, fitted = calibrated_guard(guard, examples, batch_size=8)
    assert ("search bound" in caplog.text) == (fitted.level.at_bound or fitted.type.at_bound)  # warned iff at a bound
