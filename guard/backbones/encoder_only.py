"""Classifier-only backbones: a LLaVA model's vision tower and token embeddings, without its language model.

The guard's classification reads only these two parts of the model (the vision features feed the safety
projector, the prompt's token embeddings feed the safety head), so a guard built on an
:class:`EncoderOnlyModel` judges requests exactly as one built on the full model while holding a small
fraction of its weights: it can front a vision-language model served elsewhere. It cannot generate.
"""

from __future__ import annotations

from typing import Any, ClassVar, NoReturn

from torch import nn

from psaguard.backbones.base import Backbone, VisionFeatures
from psaguard.backbones.llava import LlavaBackbone
from psaguard.backbones.llava_next import LlavaNextBackbone
from psaguard.backbones.registry import register_backbone, registered_backbones
from psaguard.errors import GenerationUnavailableError

__all__ = [
    "ENCODER_ONLY_BACKBONES",
    "EncoderOnlyBackbone",
    "EncoderOnlyLlavaBackbone",
    "EncoderOnlyLlavaNextBackbone",
    "EncoderOnlyModel",
    "encoder_only_backbones",
]


def _cannot_generate(config: Any) -> GenerationUnavailableError:
    return GenerationUnavailableError.classifier_only(
        config.model_type, "the vision tower and token embeddings", "no projector or language model"
    )


class EncoderOnlyModel(nn.Module):
    """The vision tower and input-embedding table of a LLaVA-family model, under the full model's ``config``.

    Build it with :func:`psaguard.backbones.encoder_checkpoint.load_encoder_only`. ``generate`` and
    ``forward`` raise :class:`~psaguard.errors.GenerationUnavailableError`.
    """

    def __init__(self, config: Any, vision_tower: nn.Module, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        self.config = config
        self.vision_tower = vision_tower
        self.embed_tokens = embed_tokens

    def get_input_embeddings(self) -> nn.Embedding:
        """The language model's input-embedding table (as on a ``PreTrainedModel``)."""
        return self.embed_tokens

    def forward(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise _cannot_generate(self.config)

    def generate(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Always raises :class:`~psaguard.errors.GenerationUnavailableError`: there is no language model."""
        raise _cannot_generate(self.config)


class EncoderOnlyBackbone(Backbone):
    """What a classifier-only adapter changes in its family's adapter: dispatch, and no generation.

    The family adapter reads the tower as ``model.vision_tower`` (an :class:`EncoderOnlyModel` has no
    ``.model``) and the embeddings through ``get_input_embeddings``, so encoding and sizes are inherited.
    A family gets classifier-only mode by registering ``class EncoderOnlyX(EncoderOnlyBackbone, XBackbone)``
    after its full adapter ``XBackbone`` (so that it is tried first).
    """

    tower_checkpoint_prefixes: ClassVar[tuple[str, ...]] = ("model.vision_tower.", "vision_tower.")
    """Where the family's checkpoints keep the vision tower's tensors. LLaVA-style: transformers 5 writes the
    legacy layout (``vision_tower.*``) and reads it and the layout transformers 4.5x wrote
    (``model.vision_tower.*``)."""
    embedding_checkpoint_keys: ClassVar[tuple[str, ...]] = (
        "model.language_model.embed_tokens.weight",
        "language_model.model.embed_tokens.weight",
    )
    """Checkpoint keys of the language model's input-embedding table, in either layout."""

    @classmethod
    def tower_from_config(cls, vision_config: Any) -> nn.Module:
        """The family's vision tower built from ``vision_config`` as the full model builds it (random or meta).

        Default: ``transformers.AutoModel.from_config``; families whose tower class AutoModel does not map
        override this.
        """
        from transformers import AutoModel

        return AutoModel.from_config(vision_config)

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return isinstance(model, EncoderOnlyModel) and super().supports(model)

    def check_can_generate(self) -> NoReturn:
        raise _cannot_generate(self.config)

    def project(self, features: VisionFeatures) -> NoReturn:
        raise _cannot_generate(self.config)


@register_backbone
class EncoderOnlyLlavaBackbone(EncoderOnlyBackbone, LlavaBackbone):
    """LLaVA-1.5 without projector and language model; fingerprints as ``'llava'``, like the full model."""


@register_backbone
class EncoderOnlyLlavaNextBackbone(EncoderOnlyBackbone, LlavaNextBackbone):
    """LLaVA-NeXT without projector and language model; fingerprints as ``'llava_next'``, like the full model."""


ENCODER_ONLY_BACKBONES: tuple[type[Backbone], ...] = (EncoderOnlyLlavaBackbone, EncoderOnlyLlavaNextBackbone)
"""The built-in LLaVA classifier-only adapters. Registered after the full-model ones, so they are tried first:
an EncoderOnlyModel carries its full model's ``config.model_type``, which the full-model adapters claim too."""


def encoder_only_backbones() -> tuple[type[Backbone], ...]:
    """Every registered classifier-only adapter (built in or a family's own), newest first."""
    return tuple(adapter for adapter in registered_backbones() if issubclass(adapter, EncoderOnlyBackbone))
