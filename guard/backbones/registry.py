"""Which adapter handles a model: the registry of family adapters and the lookup over it.

A family adapter is registered once, when its module is imported (``@register_backbone`` on the class);
:func:`resolve_backbone` asks the registered adapters, newest first, whether they handle a model, so an
adapter registered later (an application's own, a more specific layout such as a LLaVA with a Pixtral
vision tower) takes precedence over the built-in one it refines. Adapters marked ``fallback`` (the generic
adapter of every model following transformers' multimodal interface) are asked only after all the others.
See docs/adapters.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from torch import nn

from psaguard.backbones.base import Backbone, unwrap_model
from psaguard.errors import ConfigError, UnsupportedModelError

__all__ = ["ADAPTERS_DOC", "BackboneRegistry", "register_backbone", "registered_backbones", "resolve_backbone"]

ADAPTERS_DOC = "docs/adapters.md"
"""Where writing and registering a family adapter is documented (named in UnsupportedModelError)."""

B = TypeVar("B", bound=type[Backbone])


class BackboneRegistry:
    """An ordered set of adapter classes; :meth:`resolve` tries the newest first."""

    def __init__(self) -> None:
        self._adapters: list[type[Backbone]] = []

    def register(self, adapter: B) -> B:
        """Add ``adapter`` (a :class:`Backbone` subclass); registering a class twice is a no-op."""
        if not (isinstance(adapter, type) and issubclass(adapter, Backbone)):
            raise ConfigError(f"register_backbone takes a Backbone subclass, got {adapter!r}")
        if not getattr(adapter, "family", None) or not getattr(adapter, "model_types", None):
            raise ConfigError(f"{adapter.__name__} must set the class attributes 'family' and 'model_types'")
        if adapter not in self._adapters:
            self._adapters.append(adapter)
        return adapter

    def adapters(self) -> tuple[type[Backbone], ...]:
        """The registered adapters in the order :meth:`resolve` tries them (newest first, fallbacks last)."""
        newest_first = tuple(reversed(self._adapters))
        return tuple(a for a in newest_first if not a.fallback) + tuple(a for a in newest_first if a.fallback)

    def resolve(self, model: nn.Module) -> Backbone:
        """The adapter for ``model``; :class:`UnsupportedModelError` if no registered adapter handles it."""
        if model is None or not isinstance(model, nn.Module):
            raise UnsupportedModelError(f"expected a loaded vision-language model (torch.nn.Module), got {model!r}")
        for adapter in self.adapters():
            if adapter.supports(model):
                return adapter(model)
        raise _unsupported(model, self.adapters())


_REGISTRY = BackboneRegistry()
"""The adapters psaguard resolves models with: the built-in ones plus any an application registers."""


def register_backbone(adapter: B) -> B:
    """Register a family adapter; usable as a class decorator (``@register_backbone``).

    Later registrations take precedence, so an adapter for a specific layout of a family (or an
    application's replacement) is tried before the built-in adapter of that family.
    """
    return _REGISTRY.register(adapter)


def registered_backbones() -> tuple[type[Backbone], ...]:
    """The registered adapters, newest first (the order :func:`resolve_backbone` tries them)."""
    return _REGISTRY.adapters()


def resolve_backbone(model: nn.Module, backbones: Sequence[type[Backbone]] | None = None) -> Backbone:
    """The adapter for ``model`` from ``backbones`` (in order), or from the registry when None.

    Raises :class:`UnsupportedModelError` naming the model type, the supported types and how to add an adapter.
    """
    if backbones is None:
        return _REGISTRY.resolve(model)
    registry = BackboneRegistry()
    for adapter in reversed(tuple(backbones)):
        registry.register(adapter)
    return registry.resolve(model)


def _unsupported(model: nn.Module, adapters: Sequence[type[Backbone]]) -> UnsupportedModelError:
    model_type = getattr(getattr(unwrap_model(model), "config", None), "model_type", None)
    supported = sorted({t for adapter in adapters for t in adapter.model_types})
    reasons = [reason for adapter in adapters if (reason := adapter.why_unsupported(model))]
    why = f" ({'; '.join(reasons)})" if reasons else ""
    return UnsupportedModelError(
        f"{type(model).__name__} (model_type={model_type!r}) is not a supported vision-language model{why}; "
        f"supported model types: {supported}. To add a family, subclass psaguard.backbones.Backbone and "
        f"register it with @psaguard.backbones.register_backbone (see {ADAPTERS_DOC})"
    )
