"""Adding and removing custom categories on a classifier: fit a category on the features of (image, prompt)
examples (:meth:`~psaguard.classifier.Classifier.category_features`), check it against the taxonomy and the other
categories, and return the classifier with the new bank (:meth:`~psaguard.classifier.Classifier.with_bank`).

What :meth:`psaguard.guard.SafetyGuard.add_category` and ``remove_category`` call; the bank itself and the fit
are :mod:`psaguard.categories`.
"""

from __future__ import annotations

from collections.abc import Sequence

from psaguard.categories.bank import fit_category, new_category
from psaguard.categories.config import CustomCategory, FitMethod, check_categories
from psaguard.classifier import Classifier
from psaguard.errors import CategoryError
from psaguard.images.decode import ImageInput
from psaguard.verdict import Action

__all__ = ["with_category", "without_category"]


def with_category(
    classifier: Classifier,
    code: str,
    examples: Sequence[tuple[ImageInput, str]],
    negatives: Sequence[tuple[ImageInput, str]] | None = None,
    *,
    level: int,
    name: str | None = None,
    concept: str | None = None,
    action: Action | None = None,
    method: FitMethod = "auto",
) -> tuple[Classifier, CustomCategory]:
    """``classifier`` plus a category fitted on the pooled features of ``examples`` and ``negatives``.

    Code, level and action are checked against the taxonomy and the other categories before any forward
    pass; :class:`CategoryError` as :meth:`psaguard.guard.SafetyGuard.add_category` says.
    """
    bank = classifier.bank
    probe = new_category(code, level=level, name=name, concept=concept, action=action)
    check_categories((*bank.categories, probe), classifier.config.taxonomy)
    positives = classifier.category_features(*_unzip_pairs(examples))
    negative_features = classifier.category_features(*_unzip_pairs(negatives)) if negatives else None
    category, weight, bias = fit_category(
        code, positives, negative_features, level=level, name=name, concept=concept, action=action, method=method
    )
    return classifier.with_bank(bank.with_category(category, weight, bias)), category


def without_category(classifier: Classifier, code: str) -> tuple[Classifier, CustomCategory]:
    """``classifier`` less the category ``code``, and that category; :class:`CategoryError` if absent."""
    bank = classifier.bank
    return classifier.with_bank(bank.without(code)), bank.categories[bank.codes.index(code)]


def _unzip_pairs(pairs: Sequence[tuple[ImageInput, str]]) -> tuple[list[ImageInput], list[str]]:
    if any(not isinstance(pair, (tuple, list)) or len(pair) != 2 for pair in pairs):
        raise CategoryError("category examples and negatives are (image, prompt) pairs")
    return [image for image, _ in pairs], [prompt for _, prompt in pairs]
