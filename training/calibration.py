"""Temperature scaling of the safety head, and the calibration measures ``psaguard eval`` reports.

The policy's thresholds act on probabilities, so they are only meaningful when the probabilities are
calibrated. Temperature scaling (Guo et al., 2017) divides each head's logits by one scalar ``T``, fitted to
minimise the negative log-likelihood on held-out data; the argmax (so accuracy and F1) does not change,
the confidence does. The fitted ``T`` of the level and type heads go into ``HeadConfig``'s
``level_temperature`` / ``type_temperature``, which the guard already divides by; a guard with a response
head gets ``response_level_temperature`` / ``response_type_temperature`` fitted on the examples that label
their answer.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from psaguard.config import SafetyGuardConfig
from psaguard.errors import DatasetError
from psaguard.guard import SafetyGuard
from psaguard.training.data import Example
from psaguard.training.predict import predict, response_logits

__all__ = [
    "MAX_TEMPERATURE",
    "MIN_TEMPERATURE",
    "CalibrationResult",
    "HeadCalibration",
    "ReliabilityBin",
    "apply_calibration",
    "calibrate_guard",
    "calibrated_guard",
    "fit_temperature",
    "nll",
    "reliability",
    "softmax",
]

logger = logging.getLogger(__name__)

MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
_SEARCH_STEPS = 60  # golden-section steps: the bracket shrinks by 0.618 per step, far below any useful precision


class ReliabilityBin(BaseModel):
    """Examples whose top probability falls in [lower, upper)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lower: float = Field(description="Lower edge of the confidence bin.")
    upper: float = Field(description="Upper edge of the confidence bin.")
    count: int = Field(description="Examples in the bin.")
    confidence: float = Field(description="Mean top probability in the bin (0 when empty).")
    accuracy: float = Field(description="Fraction of correct argmax predictions in the bin (0 when empty).")


class HeadCalibration(BaseModel):
    """What fitting one head's temperature did, on the data it was fitted on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(description="Fitted softmax temperature (>1 softens an overconfident head).")
    nll_before: float = Field(description="Mean negative log-likelihood at T = 1.")
    nll_after: float = Field(description="Mean negative log-likelihood at the fitted T.")
    ece_before: float = Field(description="Expected calibration error (10 bins) at T = 1.")
    ece_after: float = Field(description="Expected calibration error (10 bins) at the fitted T.")

    @property
    def at_bound(self) -> bool:
        """True when the fit stopped at MIN_TEMPERATURE or MAX_TEMPERATURE: the rows did not pin a temperature
        down (e.g. the head gets every one right, so sharpening without end lowers their NLL)."""
        return not MIN_TEMPERATURE * 1.01 < self.temperature < MAX_TEMPERATURE * 0.99


class CalibrationResult(BaseModel):
    """Fitted temperatures of both heads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    examples: int = Field(description="Examples the temperatures were fitted on.")
    level: HeadCalibration = Field(description="Level head.")
    type: HeadCalibration = Field(description="Type head.")
    response_examples: int = Field(0, description="Examples with response labels the response head was fitted on.")
    response_level: HeadCalibration | None = Field(None, description="Response level head, when fitted.")
    response_type: HeadCalibration | None = Field(None, description="Response type head, when fitted.")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``."""
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: Sequence[int], temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    scaled = logits / temperature
    top = scaled.max(axis=1, keepdims=True)
    log_norm = (top + np.log(np.exp(scaled - top).sum(axis=1, keepdims=True)))[:, 0]
    picked = scaled[np.arange(len(scaled)), np.asarray(labels, dtype=np.int64)]
    return float((log_norm - picked).mean())


def fit_temperature(logits: np.ndarray, labels: Sequence[int]) -> float:
    """The temperature in [MIN_TEMPERATURE, MAX_TEMPERATURE] minimising :func:`nll`.

    The NLL is convex in ``1 / T``, so a golden-section search over ``1 / T`` finds the global minimum.
    """
    if len(labels) == 0:
        raise DatasetError("cannot fit a temperature on no examples")
    low, high = 1.0 / MAX_TEMPERATURE, 1.0 / MIN_TEMPERATURE
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(logits, labels, 1.0 / a), nll(logits, labels, 1.0 / b)
    for _ in range(_SEARCH_STEPS):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(logits, labels, 1.0 / a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(logits, labels, 1.0 / b)
    return 1.0 / ((low + high) / 2)


def reliability(probs: np.ndarray, labels: Sequence[int], bins: int = 10) -> tuple[list[ReliabilityBin], float]:
    """Reliability-diagram bins of the top probability, and the expected calibration error (ECE)."""
    labels_arr = np.asarray(labels, dtype=np.int64)
    confidence = probs.max(axis=1) if len(probs) else np.zeros(0)
    correct = probs.argmax(axis=1) == labels_arr if len(probs) else np.zeros(0, dtype=bool)
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


def _fit_head(logits: np.ndarray, labels: Sequence[int]) -> HeadCalibration:
    temperature = fit_temperature(logits, labels)
    return HeadCalibration(
        temperature=temperature,
        nll_before=nll(logits, labels),
        nll_after=nll(logits, labels, temperature),
        ece_before=reliability(softmax(logits), labels)[1],
        ece_after=reliability(softmax(logits, temperature), labels)[1],
    )


def calibrate_guard(
    guard: SafetyGuard, examples: Sequence[Example], batch_size: int = 16
) -> tuple[SafetyGuardConfig, CalibrationResult]:
    """Fit both heads' temperatures on ``examples``; return the guard's config with them, and the fit.

    The guard itself is not changed; :func:`calibrated_guard` returns a guard deciding with the returned config,
    and its ``save_pretrained`` saves it (the weights record the config's digest, so save both).
    """
    predictions = predict(guard, examples, batch_size)
    result = CalibrationResult(
        examples=len(examples),
        level=_fit_head(predictions.level_logits, [e.level for e in examples]),
        type=_fit_head(predictions.type_logits, [e.type for e in examples]),
    )
    result = _with_response_fit(guard, examples, batch_size, result)
    config = guard.classifier.config
    return config.model_copy(update={"head": config.head.model_copy(update=_temperatures(result))}), result


def _with_response_fit(
    guard: SafetyGuard, examples: Sequence[Example], batch_size: int, result: CalibrationResult
) -> CalibrationResult:
    """``result`` with the response head's fit on the examples that label their answers (if the guard has one)."""
    labelled = [e for e in examples if e.has_response_labels]
    if not guard.classifier.has_response_head or not labelled:
        return result
    level_logits, type_logits = response_logits(guard, labelled, batch_size)
    return result.model_copy(
        update={
            "response_examples": len(labelled),
            "response_level": _fit_head(level_logits, [e.response_level or 0 for e in labelled]),
            "response_type": _fit_head(type_logits, [e.response_type or 0 for e in labelled]),
        }
    )


def _temperatures(result: CalibrationResult) -> dict[str, float]:
    """The head config's temperature fields of every fitted head."""
    heads = {
        "level": result.level,
        "type": result.type,
        "response_level": result.response_level,
        "response_type": result.response_type,
    }
    return {f"{name}_temperature": head.temperature for name, head in heads.items() if head is not None}


def calibrated_guard(
    guard: SafetyGuard, examples: Sequence[Example], batch_size: int = 16
) -> tuple[SafetyGuard, CalibrationResult]:
    """A new guard deciding with temperatures fitted on ``examples`` (same model, modules and categories), and
    the fit; ``guard`` itself is left as it was. Logs the fit.

    ``calibrated.save_pretrained(path)`` writes the config with the temperatures and the weights with that
    config's digest.
    """
    config, result = calibrate_guard(guard, examples, batch_size)
    parts = guard.classifier.with_config(config)
    calibrated = type(guard)(parts.model, parts.processor, config, parts.modules, parts.backbone, parts.bank)
    heads = [("level", result.level), ("type", result.type)]
    responses = (("response level", result.response_level), ("response type", result.response_type))
    heads += [(name, head) for name, head in responses if head is not None]
    for name, head in heads:
        logger.info(
            "calibrated the %s head on %d examples: temperature %.3f, NLL %.3f -> %.3f, ECE %.3f -> %.3f",
            name,
            result.examples,
            head.temperature,
            head.nll_before,
            head.nll_after,
            head.ece_before,
            head.ece_after,
        )
        if head.at_bound:
            logger.warning(
                "the %s head's temperature %.3f is at the search bound: its %d calibration rows do not pin one "
                "down (the head gets them nearly all right); fit on more rows like the ones it will judge",
                name,
                head.temperature,
                result.examples,
            )
    return calibrated, result


def apply_calibration(guard: SafetyGuard, examples: Sequence[Example], batch_size: int = 16) -> CalibrationResult:
    """Deprecated: switches ``guard`` itself to the fitted temperatures; use :func:`calibrated_guard`, which
    returns a new guard and leaves the caller's as it is."""
    warnings.warn(
        "apply_calibration changes the guard it is given; use calibrated_guard, which returns a new guard",
        DeprecationWarning,
        stacklevel=2,
    )
    calibrated, result = calibrated_guard(guard, examples, batch_size)
    guard.classifier = calibrated.classifier
    return result
