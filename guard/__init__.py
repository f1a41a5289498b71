"""psaguard: PSA-VLM safety guardrails for LLaVA-style vision-language models.

``import psaguard`` changes nothing global; heavy and optional parts load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psaguard._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "Action": "psaguard.verdict",
    "AsyncGuardedStream": "psaguard.generation.streaming",
    "CategoryError": "psaguard.errors",
    "CheckpointError": "psaguard.errors",
    "CheckpointMismatchError": "psaguard.errors",
    "ConfigError": "psaguard.errors",
    "CustomCategory": "psaguard.categories.config",
    "DEFAULT_TAXONOMY": "psaguard.taxonomy",
    "DatasetError": "psaguard.errors",
    "GenerationOptions": "psaguard.policy",
    "GenerationUnavailableError": "psaguard.errors",
    "GuardBlocked": "psaguard.errors",
    "GuardInternalError": "psaguard.errors",
    "GuardPolicy": "psaguard.policy",
    "GuardRequest": "psaguard.request",
    "GuardedGeneration": "psaguard.generation.plan",
    "GuardedModel": "psaguard.generation.wrapped",
    "GuardedStream": "psaguard.generation.streaming",
    "HeadConfig": "psaguard.config",
    "InvalidImageError": "psaguard.errors",
    "InvalidInputError": "psaguard.errors",
    "InvalidPromptError": "psaguard.errors",
    "LabelRef": "psaguard.verdict",
    "ModelFingerprint": "psaguard.config",
    "ProjectorConfig": "psaguard.config",
    "ProcessorError": "psaguard.errors",
    "PsaGuardError": "psaguard.errors",
    "RemoteImageError": "psaguard.errors",
    "ResponseBlocked": "psaguard.errors",
    "ResponseHeadMissingError": "psaguard.errors",
    "ResponsePolicy": "psaguard.responses.policy",
    "ResponseRule": "psaguard.responses.policy",
    "ResponseVerdict": "psaguard.verdict",
    "RiskLevel": "psaguard.taxonomy",
    "RiskType": "psaguard.taxonomy",
    "SafetyGuard": "psaguard.guard",
    "SafetyGuardConfig": "psaguard.config",
    "SafetyVerdict": "psaguard.verdict",
    "TextOnlyAction": "psaguard.policy",
    "Taxonomy": "psaguard.taxonomy",
    "TokensConfig": "psaguard.config",
    "TypeRule": "psaguard.policy",
    "UnsupportedModelError": "psaguard.errors",
    "decide": "psaguard.policy",
    "load_image": "psaguard.images",
}

__all__ = sorted([*_EXPORTS, "__version__"])

if TYPE_CHECKING:
    from psaguard.categories.config import CustomCategory
    from psaguard.config import HeadConfig, ModelFingerprint, ProjectorConfig, SafetyGuardConfig, TokensConfig
    from psaguard.errors import (
        CategoryError,
        CheckpointError,
        CheckpointMismatchError,
        ConfigError,
        DatasetError,
        GenerationUnavailableError,
        GuardBlocked,
        GuardInternalError,
        InvalidImageError,
        InvalidInputError,
        InvalidPromptError,
        ProcessorError,
        PsaGuardError,
        RemoteImageError,
        ResponseBlocked,
        ResponseHeadMissingError,
        UnsupportedModelError,
    )
    from psaguard.generation.plan import GuardedGeneration
    from psaguard.generation.streaming import AsyncGuardedStream, GuardedStream
    from psaguard.generation.wrapped import GuardedModel
    from psaguard.guard import SafetyGuard
    from psaguard.images.decode import load_image
    from psaguard.policy import (
        GenerationOptions,
        GuardPolicy,
        TextOnlyAction,
        TypeRule,
        decide,
    )
    from psaguard.request import GuardRequest
    from psaguard.responses.policy import ResponsePolicy, ResponseRule
    from psaguard.taxonomy import DEFAULT_TAXONOMY, RiskLevel, RiskType, Taxonomy
    from psaguard.verdict import Action, LabelRef, ResponseVerdict, SafetyVerdict


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
