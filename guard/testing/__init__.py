"""Test support: tiny random models and processors of model families, built offline from configs."""

from __future__ import annotations

from psaguard.testing.families import (
    TinyBuild,
    TinyBuildError,
    build_meta_model,
    build_tiny_family,
    image_text_to_text_types,
    save_tiny_family,
)

__all__ = [
    "TinyBuild",
    "TinyBuildError",
    "build_meta_model",
    "build_tiny_family",
    "image_text_to_text_types",
    "save_tiny_family",
]
