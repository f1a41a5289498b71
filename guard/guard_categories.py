"""``CategoryMethods``: the facade's custom categories (add, remove, list), fitted without retraining."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from psaguard.categories.config import CustomCategory, FitMethod
from psaguard.categories.fitting import with_category, without_category
from psaguard.classifier import Classifier
from psaguard.images.decode import ImageInput
from psaguard.verdict import Action

__all__ = ["CategoryMethods"]

logger = logging.getLogger(__name__)


class CategoryMethods:
    """Custom categories of :class:`~psaguard.guard.SafetyGuard` (:mod:`psaguard.categories`): each change
    replaces the guard's ``classifier`` with one holding the new category bank."""

    classifier: Classifier

    @property
    def categories(self) -> tuple[CustomCategory, ...]:
        """The custom categories, in the order they were added."""
        return self.classifier.bank.categories

    def add_category(
        self,
        code: str,
        examples: Sequence[tuple[ImageInput, str]],
        *,
        level: int,
        name: str | None = None,
        negatives: Sequence[tuple[ImageInput, str]] | None = None,
        action: Action | None = None,
        concept: str | None = None,
        method: FitMethod = "auto",
    ) -> CustomCategory:
        """Add a risk category from ``examples`` ((image, prompt) pairs showing it), without retraining.

        Judged in the same forward pass as the head, from its pooled feature, the image's mean patch state and
        the prompt's mean token embedding (:func:`psaguard.categories.category_features`); when it fires, its code is in
        ``verdict.rule`` and its ``level`` and ``action`` (default: the policy's for the level) in the verdict.
        ``negatives`` (benign pairs) set the threshold (:mod:`psaguard.categories`, docs/categories.md). This
        changes this guard (it owns its bank), not wrappers or copies made earlier. Raises
        :class:`~psaguard.errors.CategoryError` (bad code or level, no examples, non-finite features, examples
        the features cannot tell from the negatives) and typed input errors for bad images or prompts.
        """
        self.classifier, category = with_category(
            self.classifier,
            code,
            examples,
            negatives,
            level=level,
            name=name,
            concept=concept,
            action=action,
            method=method,
        )
        logger.info("added custom category %r from %d examples", code, category.examples)
        return category

    def remove_category(self, code: str) -> CustomCategory:
        """Remove the custom category ``code`` and return it; :class:`~psaguard.errors.CategoryError` if absent."""
        self.classifier, removed = without_category(self.classifier, code)
        return removed
