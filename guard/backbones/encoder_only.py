"""Classifier-only models and adapters: a vision-language model without its language model.

The guard's verdicts read the vision pass (tower and projector) and the prompt's input embeddings, so a guard
on a classifier-only model judges exactly as on the full model while holding a fraction of its weights: it
can front a model served elsewhere, but not generate. A classifier-only model is the family's own model class
(:func:`psaguard.backbones.encoder_checkpoint.load_encoder_only` builds and loads it) whose language model is
:class:`LanguageModelRemoved` (its input embeddings at their own path, nothing else) and whose other unread
parts (the LM head, audio towers) are :class:`PartRemoved`; its ``forward`` and ``generate`` raise
:class:`~psaguard.errors.GenerationUnavailableError`. Its adapter is the family's adapter with
:class:`EncoderOnlyBackbone` mixed in, so images are encoded and prompts embedded exactly as on the full model.
"""

from __future__ import annotations

from typing import Any, NoReturn

from torch import nn

from psaguard.backbones.base import Backbone, unwrap_model
from psaguard.backbones.generic import GenericBackbone
from psaguard.backbones.registry import register_backbone, registered_backbones
from psaguard.errors import GenerationUnavailableError

__all__ = [
    "ClassifierOnlyGenericBackbone",
    "EncoderOnlyBackbone",
    "LanguageModelRemoved",
    "PartRemoved",
    "encoder_only_backbones",
    "is_classifier_only",
    "refuse_generation",
]


def refuse_generation(config: Any, *args: Any, **kwargs: Any) -> NoReturn:
    """Raise the classifier-only :class:`~psaguard.errors.GenerationUnavailableError` of ``config``'s model."""
    raise GenerationUnavailableError.classifier_only(
        config.model_type, "the vision tower, projector and input embeddings", "no language model"
    )


class PartRemoved(nn.Module):
    """A part of the model classifier-only mode does not load (e.g. the LM head); calling it raises."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    def forward(self, *args: Any, **kwargs: Any) -> NoReturn:
        refuse_generation(self.config)


class LanguageModelRemoved(PartRemoved):
    """The language model of a classifier-only model: its input-embedding table under its own name, no layers."""

    def __init__(self, config: Any, path: str, embeddings: nn.Module) -> None:
        super().__init__(config)
        self._embedding_path = path
        *containers, leaf = path.split(".")
        owner: nn.Module = self
        for container in containers:  # the embeddings keep their path, so checkpoint keys name them as before
            owner.add_module(container, nn.Module())
            owner = owner.get_submodule(container)
        owner.add_module(leaf, embeddings)

    def get_input_embeddings(self) -> nn.Module:
        """The input-embedding table (as on the language model it replaces)."""
        return self.get_submodule(self._embedding_path)


def is_classifier_only(model: nn.Module) -> bool:
    """Whether ``model`` (through wrappers) is a classifier-only model (its language model removed)."""
    return any(isinstance(module, LanguageModelRemoved) for module in unwrap_model(model).modules())


class EncoderOnlyBackbone(Backbone):
    """What a classifier-only adapter changes in its family's adapter: dispatch, and no generation.

    A family gets classifier-only mode by registering ``class EncoderOnlyX(EncoderOnlyBackbone, XBackbone)``
    after its full adapter ``XBackbone`` (so that it is tried first on a classifier-only model).
    """

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return is_classifier_only(model) and super().supports(model)

    def check_can_generate(self) -> NoReturn:
        refuse_generation(self.config)


@register_backbone
class ClassifierOnlyGenericBackbone(EncoderOnlyBackbone, GenericBackbone):
    """The generic adapter on a classifier-only model: it classifies exactly as on the full model and refuses
    to generate. Registered after :class:`GenericBackbone`, so it is tried first."""


def encoder_only_backbones() -> tuple[type[Backbone], ...]:
    """Every registered classifier-only adapter (built in or a family's own), newest first."""
    return tuple(adapter for adapter in registered_backbones() if issubclass(adapter, EncoderOnlyBackbone))
