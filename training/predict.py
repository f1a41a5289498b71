"""The guard's verdicts and raw head logits on labelled examples, through the call the application makes.

Evaluation and calibration both start here: every example is judged with ``guard.analyze`` on its image
and :attr:`~psaguard.training.data.Example.prompt` (the text the guard judges at inference), so the
verdicts scored are exactly what the policy does; the raw logits are the ones those verdicts came from (one
vision pass and one head pass per batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from psaguard.guard import SafetyGuard
from psaguard.training.collate import load_example_image
from psaguard.training.data import Example
from psaguard.verdict import SafetyVerdict

__all__ = ["Predictions", "predict", "response_logits"]


@dataclass(frozen=True)
class Predictions:
    """Per-example verdicts and raw logits of both heads (rows in example order, columns in class-id order)."""

    verdicts: list[SafetyVerdict]
    level_logits: np.ndarray
    type_logits: np.ndarray

    def probs(self, head: str) -> np.ndarray:
        """The probabilities the guard's policy acted on (with the guard's temperatures), (N, classes)."""
        rows = [list((v.level_probs if head == "level" else v.type_probs).values()) for v in self.verdicts]
        width = (self.level_logits if head == "level" else self.type_logits).shape[1]
        return np.asarray(rows, dtype=np.float64).reshape(len(rows), width)

    @property
    def flagged(self) -> list[bool]:
        return [verdict.flagged for verdict in self.verdicts]


def predict(guard: SafetyGuard, examples: Sequence[Example], batch_size: int = 16) -> Predictions:
    """Judge every example with ``guard`` (image + judged text), in batches; keep the raw logits too.

    Raises:
        DatasetError: An example could not be judged (its image or text is invalid), naming its file and line.
    """
    classifier = guard.classifier
    classifier.modules.eval()
    verdicts: list[SafetyVerdict] = []
    level, kind = [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        images = [load_example_image(e, classifier.config.max_image_pixels) for e in chunk]
        prompts = [e.prompt for e in chunk]
        analysis = classifier.analyze(images, prompts)
        logits = analysis.logits
        if logits is None or len(analysis.judged) != len(chunk):
            bad = next(i for i in range(len(chunk)) if i not in analysis.judged)
            raise chunk[bad].error(f"the guard could not judge this example: {analysis.verdicts[bad].error}")
        verdicts += analysis.verdicts
        level.append(logits.level.float().cpu().numpy())
        kind.append(logits.type.float().cpu().numpy())
    taxonomy = classifier.config.taxonomy
    return Predictions(
        verdicts=verdicts,
        level_logits=np.concatenate(level).astype(np.float64) if level else np.zeros((0, taxonomy.num_levels)),
        type_logits=np.concatenate(kind).astype(np.float64) if kind else np.zeros((0, taxonomy.num_types)),
    )


def response_logits(
    guard: SafetyGuard, examples: Sequence[Example], batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Raw response-head logits (level, type) of ``examples`` (image, judged text, last answer), in order.

    Raises :class:`~psaguard.errors.ResponseHeadMissingError` for a guard without a response head.
    """
    classifier = guard.classifier
    classifier.require_response_head()
    classifier.modules.eval()
    level, kind = [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        images = [load_example_image(e, classifier.config.max_image_pixels) for e in chunk]
        with torch.inference_mode():
            features = classifier.backbone.encode_images(**classifier.preprocess(images))
            answers = [e.response for e in chunk]
            logits = classifier.responses.response_head_logits(features, [e.prompt for e in chunk], answers)
        level.append(logits.level.float().cpu().numpy())
        kind.append(logits.type.float().cpu().numpy())
    taxonomy = classifier.config.taxonomy
    return (
        np.concatenate(level).astype(np.float64) if level else np.zeros((0, taxonomy.num_levels)),
        np.concatenate(kind).astype(np.float64) if kind else np.zeros((0, taxonomy.num_types)),
    )
