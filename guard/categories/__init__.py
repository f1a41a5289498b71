"""Custom risk categories from a few examples, judged in the classifier's own pass (see docs/categories.md).

``config`` holds a category's settings (torch-free: the policy and the guard's config read it), ``bank`` the
scorers the classifier runs, ``fitting`` a classifier with a category added or removed (what
``SafetyGuard.add_category`` / ``remove_category`` use). Names resolve lazily, so importing ``config`` loads
no torch and this package never imports ``fitting``, which sits above the classifier.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psaguard._lazy import lazy_exports

_BANK = "psaguard.categories.bank"
_CONFIG = "psaguard.categories.config"
_EXPORTS = {
    "FEATURES": _CONFIG,
    "FIRE_AT": _CONFIG,
    "SINGLE_EXAMPLE_SIMILARITY": _BANK,
    "WEIGHT_KEYS": _BANK,
    "CategoryBank": _BANK,
    "CategoryMethod": _CONFIG,
    "CustomCategory": _CONFIG,
    "FitMethod": _CONFIG,
    "category_features": _BANK,
    "category_width": _BANK,
    "check_categories": _CONFIG,
    "fit_category": _BANK,
    "new_category": _BANK,
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from psaguard.categories.bank import (
        SINGLE_EXAMPLE_SIMILARITY,
        WEIGHT_KEYS,
        CategoryBank,
        category_features,
        category_width,
        fit_category,
        new_category,
    )
    from psaguard.categories.config import (
        FEATURES,
        FIRE_AT,
        CategoryMethod,
        CustomCategory,
        FitMethod,
        check_categories,
    )

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
