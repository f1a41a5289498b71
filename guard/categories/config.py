"""A custom category's configuration, saved in the guard's JSON config (its scorer is in
:mod:`psaguard.categories`); torch-free, so the policy and the config read it without loading torch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from psaguard.errors import CategoryError
from psaguard.taxonomy import CODE_PATTERN, Taxonomy
from psaguard.verdict import Action

__all__ = ["FEATURES", "FIRE_AT", "CategoryMethod", "CustomCategory", "FitMethod", "check_categories"]

CategoryMethod = Literal["prototype", "logistic"]
"""How a category's scorer was fitted: nearest class mean (cosine without negatives), or a logistic regression."""

FitMethod = Literal["auto", "prototype", "logistic"]
"""How to fit a category's scorer: 'auto' is 'logistic' with negatives and 'prototype' without."""

FIRE_AT = 0.5
"""A custom category fires when its probability reaches this."""

FEATURES = "pooled+image+prompt"
"""The features a category's scorer reads (:func:`psaguard.categories.category_features`): the head's pooled
safety feature, the image's mean vision patch state and the prompt's mean token embedding, each L2-normalised.
Categories saved by an older psaguard read the pooled feature alone (``"pooled"``) and are refused on load."""


class CustomCategory(BaseModel):
    """A risk category added to a guard from examples (no retraining); its scorer lives in the bank's tensors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str = Field(pattern=CODE_PATTERN, description="Stable machine name; must not be a taxonomy type code.")
    name: str = Field(description="Human-readable name (defaults to the code).")
    concept: str = Field(description="Noun phrase used in hints and refusals, like a risk type's concept.")
    level: int = Field(ge=1, description="Risk level id a firing category carries (1 or more).")
    action: Action | None = Field(
        None, description="Action when it fires; None takes the policy's level_actions for its level."
    )
    method: CategoryMethod = Field("prototype", description="How the scorer was fitted (see psaguard.categories).")
    examples: int = Field(ge=1, description="Number of positive examples it was fitted from.")
    negatives: int = Field(0, ge=0, description="Number of negative examples it was fitted from.")
    features: str = Field(
        "pooled",
        description=f"The features its scorer reads; {FEATURES!r} (older files, without the field, read 'pooled').",
    )
    threshold: float = Field(
        description="The score at which it fires, before the sigmoid: a cosine for prototypes without negatives, a "
        "score on standardised features with them, 0 (a logit) for logistic."
    )


def check_categories(categories: Sequence[CustomCategory], taxonomy: Taxonomy) -> None:
    """Raise :class:`CategoryError` for categories fitted on other features (older files), duplicate codes, codes
    of taxonomy types, or levels the taxonomy lacks."""
    _check_current_features(categories)
    _check_codes([category.code for category in categories], taxonomy)
    for category in categories:
        if category.level >= taxonomy.num_levels:
            raise CategoryError(
                f"custom category {category.code!r} has level {category.level}, but the highest level is "
                f"{taxonomy.num_levels - 1}"
            )


def _check_current_features(categories: Sequence[CustomCategory]) -> None:
    """Categories fitted on other features (by an older psaguard) are refused, with the way to refit them."""
    if stale := {category.code: category.features for category in categories if category.features != FEATURES}:
        raise CategoryError(
            f"custom categories {sorted(stale)} were fitted on other features ({sorted(set(stale.values()))}) by an "
            f"older psaguard; this one reads {FEATURES!r}. Load the guard with the psaguard that saved it, remove them "
            "('psaguard category remove') and add them again from their examples with this version"
        )


def _check_codes(codes: list[str], taxonomy: Taxonomy) -> None:
    """Custom category codes are unique and none is a risk type of ``taxonomy``."""
    if duplicates := sorted({code for code in codes if codes.count(code) > 1}):
        raise CategoryError(f"custom category codes must be unique; repeated: {duplicates}")
    if clashes := sorted(set(codes) & {risk_type.code for risk_type in taxonomy.types}):
        raise CategoryError(f"custom category codes {clashes} are risk types of the taxonomy; choose other codes")
