"""The training objective of both stages: LM loss + lambda * (CE(level) + CE(type)).

A guard with a response head adds, on the rows that label their answer, the response head's
``CE(response level) + CE(response type)`` to the head loss (same lambda): one guard judges both sides.

One ``nn.Module`` holds the base model and the safety modules so that accelerate can wrap it (DDP) and
checkpoints can name its trainable parameters. The vision tower and the model's own projector run under
``no_grad``: they are frozen in both stages and their activations are not needed for backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from psaguard.backbones import VisionFeatures
from psaguard.guard import SafetyGuard
from psaguard.injection import IGNORE_INDEX, build_llm_inputs
from psaguard.tokenization import pad_token_id
from psaguard.training.collate import Batch

__all__ = ["GuardObjective", "StepOutput"]


@dataclass
class StepOutput:
    """Losses of one batch (``loss`` is what backward runs on) and the head's hits, for logging."""

    loss: torch.Tensor
    lm_loss: torch.Tensor
    head_loss: torch.Tensor
    level_correct: torch.Tensor
    type_correct: torch.Tensor
    count: int
    level_pred: torch.Tensor
    type_pred: torch.Tensor
    response_loss: torch.Tensor | None = None
    """The response head's cross-entropies (part of ``head_loss``); None when no row labels its answer."""


class GuardObjective(nn.Module):
    """Computes a batch's losses for a guard and its model.

    Args:
        guard: The guard; its model and modules become submodules of this one.
        model: The module to call for the LM loss (the guard's model, or a PEFT wrapper of it).
        lm_weight: Weight of the LM loss; 0 skips the language model entirely.
        head_weight: lambda, the weight of the head's cross-entropies; 0 still computes them (no grad).
    """

    def __init__(self, guard: SafetyGuard, model: nn.Module, lm_weight: float, head_weight: float) -> None:
        super().__init__()
        self.model = model
        self.classifier = guard.classifier
        """What the objective trains and calls (the guard's classifier: its backbone, modules and heads)."""
        self.safety = self.classifier.modules
        self.lm_weight = lm_weight
        self.head_weight = head_weight
        self.inject_llm_tokens = self.classifier.config.tokens.inject_llm_tokens
        self.pad_id = pad_token_id(self.classifier.prompts.tokenizer)

    def forward(self, batch: Batch) -> StepOutput:
        backbone = self.classifier.backbone
        with torch.no_grad():
            features = backbone.encode_images(batch.pixel_values, **batch.image_inputs)
            projected = backbone.project(features) if self.lm_weight > 0 else None
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.head_weight > 0):
            logits = self.classifier.head_logits(features, batch.prompts)
            level = batch.level.to(logits.level.device)
            kind = batch.type.to(logits.type.device)
            head_loss = F.cross_entropy(logits.level.float(), level) + F.cross_entropy(logits.type.float(), kind)
            response_loss = self._response_loss(batch, features)
            if response_loss is not None:
                head_loss = head_loss + response_loss
        lm_loss = head_loss.new_zeros(())
        if projected is not None and bool((batch.labels != IGNORE_INDEX).any()):  # all harmful answers: no target
            lm_loss = self._lm_loss(batch, features, projected)
        loss = self.lm_weight * lm_loss + (self.head_weight * head_loss if self.head_weight > 0 else 0.0)
        level_pred, type_pred = logits.level.argmax(-1).detach(), logits.type.argmax(-1).detach()
        return StepOutput(
            loss=loss,
            lm_loss=lm_loss.detach(),
            head_loss=head_loss.detach(),
            level_correct=(level_pred == level).sum(),
            type_correct=(type_pred == kind).sum(),
            count=len(batch),
            level_pred=level_pred,
            type_pred=type_pred,
            response_loss=None if response_loss is None else response_loss.detach(),
        )

    def _response_loss(self, batch: Batch, features: VisionFeatures) -> torch.Tensor | None:
        """The response head's cross-entropies on the rows that label their answer (None when none does)."""
        if batch.response_level is None or batch.response_type is None or self.safety.response_head is None:
            return None
        rows = (batch.response_level != IGNORE_INDEX).nonzero().flatten().tolist()
        if not rows:
            return None
        logits = self.classifier.responses.response_head_logits(
            features.subset(rows), [batch.prompts[r] for r in rows], [batch.responses[r] for r in rows]
        )
        level = batch.response_level[rows].to(logits.level.device)
        kind = batch.response_type[rows].to(logits.type.device)
        return F.cross_entropy(logits.level.float(), level) + F.cross_entropy(logits.type.float(), kind)

    def _lm_loss(self, batch: Batch, features: VisionFeatures, projected: list[torch.Tensor]) -> torch.Tensor:
        # The same placement as guarded generation, so llm_tokens are trained where they are used.
        inputs = build_llm_inputs(
            _unpadded(batch.input_ids, batch.attention_mask),
            projected,
            layout=self.classifier.backbone.image_layout(features, projected),
            pad_token_id=self.pad_id,
            llm_tokens=self.safety.llm_tokens if self.inject_llm_tokens else None,
            labels=_unpadded(batch.labels, batch.attention_mask),
            padding_side="right",  # as the collator pads: every row's positions start at 0
            device=self.classifier.backbone.device,
        )
        return self.model(**inputs.model_kwargs(), use_cache=False).loss.float()


def _unpadded(rows: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
    """The real (unmasked) positions of each row of a padded batch."""
    return [row[mask.bool()].tolist() for row, mask in zip(rows.cpu(), attention_mask.cpu())]
