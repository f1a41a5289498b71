"""The exceptions psaguard raises.

Every error the guard raises on purpose is a :class:`PsaGuardError`, so callers can fail closed with one
narrow ``except`` clause. Input problems, checkpoint problems and policy blocks are distinct subclasses.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from psaguard.verdict import ResponseVerdict, SafetyVerdict

__all__ = [
    "CategoryError",
    "CheckpointError",
    "CheckpointMismatchError",
    "ConfigError",
    "DatasetError",
    "GenerationUnavailableError",
    "GuardBlocked",
    "GuardInternalError",
    "InvalidImageError",
    "InvalidInputError",
    "InvalidPromptError",
    "ProcessorError",
    "PsaGuardError",
    "RemoteImageError",
    "ResponseBlocked",
    "ResponseHeadMissingError",
    "UnsupportedModelError",
    "internal_error",
]

logger = logging.getLogger(__name__)


class PsaGuardError(Exception):
    """Base class of every error psaguard raises on purpose."""


class ConfigError(PsaGuardError, ValueError):
    """A config, policy or label set is invalid."""


class CategoryError(ConfigError):
    """A custom risk category cannot be added, removed or loaded (repeated or clashing code, no examples,
    non-finite features, examples that the guard's features cannot tell from the negatives)."""


class InvalidInputError(PsaGuardError, ValueError):
    """A request cannot be judged because its input is invalid."""


class InvalidImageError(InvalidInputError):
    """An image is missing, corrupt, too large, or of an unsupported kind."""


class RemoteImageError(InvalidImageError):
    """An image is given by a remote URL; psaguard fetches nothing, so the caller must download it."""


class InvalidPromptError(InvalidInputError):
    """A prompt is not a string or cannot be tokenized."""


class DatasetError(InvalidInputError):
    """A training or evaluation data file holds an invalid row; ``path`` and ``line`` say where."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = f"{path}:{line}: " if path is not None and line is not None else f"{path}: " if path else ""
        super().__init__(where + message)


class UnsupportedModelError(PsaGuardError, TypeError):
    """The model is not of a family psaguard has a backbone adapter for."""


class ProcessorError(ConfigError):
    """The processor is missing or does not belong to the model's family (wrong tokenizer or image processor)."""


class GenerationUnavailableError(UnsupportedModelError):
    """The guard holds no language model (classifier-only mode), so it can classify but not generate."""

    @classmethod
    def classifier_only(cls, model_type: str, loaded: str, missing: str) -> GenerationUnavailableError:
        """The error of a classifier-only model that loaded ``loaded`` of a ``model_type`` model but ``missing``."""
        return cls(
            f"this guard is classifier-only: it loaded {loaded} of a {model_type!r} model but {missing}, so it can "
            "classify but not generate; load the full model for guarded generation (SafetyGuard.from_pretrained, "
            "or guard.wrap(full_model))"
        )


class CheckpointError(PsaGuardError, OSError):
    """A saved guard is missing, truncated, tampered with or unreadable."""


class CheckpointMismatchError(CheckpointError):
    """A saved guard was trained for a different base model than the one it is loaded onto."""


class GuardInternalError(PsaGuardError, RuntimeError):
    """The guard failed while judging (an error in its forward pass, non-finite scores) and could not judge.

    Raised when ``policy.on_error`` is 'block' (the default), so an internal failure refuses the request
    instead of letting it through; the original error is chained as ``__cause__``.
    """


class GuardBlocked(PsaGuardError):
    """The policy blocked a request; the verdict that blocked it is attached."""

    def __init__(self, verdict: SafetyVerdict, message: str | None = None) -> None:
        self.verdict = verdict
        super().__init__(message or f"request blocked by psaguard policy (rule {verdict.rule!r})")


class ResponseHeadMissingError(ConfigError):
    """Response checking was asked of a guard without a response head (trained before it existed, or with
    ``head.response_head=False``): retrain the guard with response labels (docs/responses.md)."""


class ResponseBlocked(PsaGuardError):
    """The response policy blocked an answer while or after it was generated; the response verdict is attached."""

    def __init__(self, verdict: ResponseVerdict, message: str | None = None) -> None:
        self.verdict = verdict
        super().__init__(message or f"answer blocked by psaguard response policy (rule {verdict.rule!r})")


def internal_error(err: RuntimeError) -> GuardInternalError:
    """The :class:`GuardInternalError` for a failure of the guard's forward pass (logged as a warning); the caller
    raises it ``from err`` or turns it into an error verdict per ``policy.on_error``."""
    # torch raises RuntimeError (and OutOfMemoryError, a subclass) for device, memory and kernel failures
    logger.warning("guard forward pass failed: %s: %s", type(err).__name__, err)
    return GuardInternalError(f"the guard failed while judging: {type(err).__name__}: {err}")
