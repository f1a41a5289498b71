"""Custom risk categories from a few examples: a bank of linear scorers over features of the guard's own pass.

A category is judged in the same forward pass as the safety head, from :func:`category_features`: the vector
the head's two linears read (:attr:`psaguard.modules.HeadLogits.pooled`), the image's mean vision patch state
(the tower's output the safety projector reads) and the prompt's mean token embedding
(:attr:`psaguard.modules.HeadLogits.prompt`), each L2-normalised, side by side. So it costs one small matrix
product per batch and no extra model call. The head's pooled feature alone, trained to tell the guard's own
types apart, barely separates a concept the guard never saw; the image and prompt parts carry what the head
discarded (on the synthetic world they about doubled the held-out concepts' F1, docs/categories.md). Every category
is one row of a ``(K, W)`` weight matrix and a bias over the L2-normalised features ``z``: its probability
is ``sigmoid(w . z + b)`` and it fires at 0.5.

How a row is fitted from ``k`` examples (positives) and optional negatives, both as normalised features:

* With negatives, the features are first standardised: centred on the mean of all fitted rows and scaled to
  unit variance per dimension on average (pooled features of different requests share most of their direction, so
  differences only show once that part is taken out); the standardisation is folded into the row's weight
  and bias, so the bank reads ``z`` itself.

  - ``method="prototype"``: the score is ``s(x) = x . (p - n)``, with ``p`` and ``n`` the means
    of the standardised positives and negatives (nearest class mean). The threshold ``t`` is the midpoint
    between the positives' mean score and the negatives' mean score, each row scored leave-one-out (against
    the mean of the *other* rows of its class, when there are others), so the examples do not vouch for
    themselves. The probability is ``sigmoid((s - t) / tau)`` with ``tau`` a quarter of the gap between
    the positives' mean score and ``t``, so the positives' mean reads about 0.98.
  - ``method="logistic"``: a class-balanced, L2-regularised logistic regression (L-BFGS), firing where
    its fitted probability reaches 0.5. ``method="auto"`` (the default) picks it: on the synthetic world it
    scored a higher F1 in most settings and, where the guard's features know the concept, a higher F1 at a
    far smaller cost to the other types than the prototype (docs/categories.md).

* Without negatives (``prototype``, which ``auto`` picks then): the score is the cosine ``z . p`` to the
  positives' normalised mean, and ``t`` the lowest leave-one-out cosine of the positives (``k >= 2``) or
  :data:`SINGLE_EXAMPLE_SIMILARITY` (``k = 1``); ``tau`` as above. Nothing tells this threshold what the
  category is *not*, so negatives (near misses, ideally) are recommended.

The config part (:class:`~psaguard.categories.config.CustomCategory`) is saved in the guard's JSON config, the
tensors in its safetensors file, so both are covered by the integrity checks of
:mod:`psaguard.checkpoints.serialization`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from pydantic import ValidationError
from torch.nn import functional as F

from psaguard.categories.config import FEATURES, CategoryMethod, CustomCategory, FitMethod
from psaguard.errors import CategoryError
from psaguard.verdict import Action

__all__ = [
    "SINGLE_EXAMPLE_SIMILARITY",
    "WEIGHT_KEYS",
    "CategoryBank",
    "category_features",
    "category_width",
    "fit_category",
    "new_category",
]

logger = logging.getLogger(__name__)

SINGLE_EXAMPLE_SIMILARITY = 0.9
"""Cosine to the one example at which a category fitted from a single example and no negatives fires.
With nothing to compare against, this is a guess; negatives replace it with a threshold fitted on data."""

WEIGHT_KEYS = ("categories.weight", "categories.bias")
"""Names of the bank's tensors in the guard's safetensors file (absent when the guard has no category)."""

_SHARPNESS = 4.0  # the positives' mean score maps to sigmoid(4) ~ 0.98
_MIN_GAP = 1e-4  # a smaller gap between positives and threshold cannot be told from noise
_LOGISTIC_L2 = 1e-2
_LOGISTIC_STEPS = 200
_INSEPARABLE = (
    "the examples do not score above the negatives on the guard's features: the category cannot be told apart "
    "from them (add clearer examples, or retrain with the category as a risk type)"
)


def category_width(text_hidden_size: int, vision_hidden_size: int) -> int:
    """Width of :func:`category_features` for a backbone: pooled and prompt parts of the text width, image part
    of the vision width."""
    return 2 * text_hidden_size + vision_hidden_size


def category_features(pooled: torch.Tensor, prompt: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """``(B, W)`` features custom categories read (:data:`~psaguard.categories.config.FEATURES`).

    ``pooled`` (B, D) the head's pooled safety feature, ``prompt`` (B, D) the prompt's mean token embedding,
    ``patches`` (B, N, C) the vision patch states; each part L2-normalised, the whole of unit norm.
    """
    parts = (pooled, patches.mean(1), prompt)
    return torch.cat([F.normalize(part.float(), dim=-1) for part in parts], dim=-1) / len(parts) ** 0.5


@dataclass(frozen=True)
class CategoryBank:
    """The custom categories of a guard: their configs and a ``(K, D)`` weight and ``(K,)`` bias (float32, CPU).

    Immutable: :meth:`with_category` and :meth:`without` return new banks.
    """

    categories: tuple[CustomCategory, ...]
    weight: torch.Tensor
    bias: torch.Tensor

    def __post_init__(self) -> None:
        count = len(self.categories)
        if self.weight.dim() != 2 or self.weight.shape[0] != count or tuple(self.bias.shape) != (count,):
            raise CategoryError(
                f"a bank of {count} categories needs a ({count}, D) weight and a ({count},) bias, got "
                f"{tuple(self.weight.shape)} and {tuple(self.bias.shape)}"
            )

    @classmethod
    def empty(cls, dim: int) -> CategoryBank:
        """A bank without categories for features of width ``dim`` (:func:`category_width`)."""
        return cls((), torch.zeros(0, dim), torch.zeros(0))

    @classmethod
    def from_tensors(cls, categories: Sequence[CustomCategory], tensors: Mapping[str, torch.Tensor]) -> CategoryBank:
        """The bank saved as ``tensors`` (see :data:`WEIGHT_KEYS`) for ``categories``."""
        weight, bias = (tensors[key].detach().to("cpu", torch.float32) for key in WEIGHT_KEYS)
        return cls(tuple(categories), weight, bias)

    @property
    def dim(self) -> int:
        """Width of the features the bank reads."""
        return self.weight.shape[1]

    @property
    def codes(self) -> list[str]:
        return [category.code for category in self.categories]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors to save beside the safety modules; empty for an empty bank."""
        return dict(zip(WEIGHT_KEYS, (self.weight, self.bias))) if self.categories else {}

    @staticmethod
    def expected(count: int, dim: int) -> dict[str, tuple[torch.Size, torch.dtype]]:
        """Names, shapes and dtypes of :meth:`tensors` for ``count`` categories over width ``dim`` (checked on load)."""
        shapes = (torch.Size((count, dim)), torch.Size((count,)))
        return {name: (shape, torch.float32) for name, shape in zip(WEIGHT_KEYS, shapes)} if count else {}

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` probabilities of every category for ``(B, W)`` :func:`category_features`."""
        z = F.normalize(features.float(), dim=-1)
        return torch.sigmoid(z @ self.weight.to(z.device).T + self.bias.to(z.device))

    def scores(self, probabilities: Sequence[float]) -> dict[str, float]:
        """One row of :meth:`probabilities` as ``{code: probability}``."""
        return {code: float(p) for code, p in zip(self.codes, probabilities)}

    def with_category(self, category: CustomCategory, weight: torch.Tensor, bias: float) -> CategoryBank:
        """This bank plus ``category`` (a ``(D,)`` weight row); :class:`CategoryError` for a repeated code."""
        if category.code in self.codes:
            raise CategoryError(f"the guard already has a custom category {category.code!r}; remove it first")
        if tuple(weight.shape) != (self.dim,):
            raise CategoryError(
                f"a weight row of shape {tuple(weight.shape)} does not fit features of width {self.dim}"
            )
        return CategoryBank(
            (*self.categories, category),
            torch.cat([self.weight, weight.detach().to("cpu", torch.float32)[None]]),
            torch.cat([self.bias, torch.tensor([float(bias)])]),
        )

    def without(self, code: str) -> CategoryBank:
        """This bank less the category ``code``; :class:`CategoryError` when there is none."""
        if code not in self.codes:
            raise CategoryError(f"no custom category {code!r}; the guard has {self.codes}")
        keep = [index for index, known in enumerate(self.codes) if known != code]
        return CategoryBank(tuple(self.categories[i] for i in keep), self.weight[keep], self.bias[keep])


def fit_category(
    code: str,
    positives: torch.Tensor,
    negatives: torch.Tensor | None = None,
    *,
    level: int,
    name: str | None = None,
    concept: str | None = None,
    action: Action | None = None,
    method: FitMethod = "auto",
) -> tuple[CustomCategory, torch.Tensor, float]:
    """Fit one category from :func:`category_features` rows: its config, its ``(W,)`` weight row and its bias.

    Raises :class:`CategoryError` for no positives, non-finite features, a logistic fit without negatives,
    or positives that score no higher than the negatives.
    """
    pos, neg = _normalised(positives, negatives)
    if method == "auto":
        method = "prototype" if neg is None else "logistic"
    weight, bias, threshold = _fit_rows(pos, neg, method)
    category = new_category(
        code,
        level=level,
        name=name,
        concept=concept,
        action=action,
        method=method,
        examples=len(pos),
        negatives=0 if neg is None else len(neg),
        threshold=threshold,
    )
    return category, weight.float(), bias


def _normalised(positives: torch.Tensor, negatives: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The checked feature rows, unit-normalised in float64 on the CPU (no or empty negatives: None)."""
    negatives = None if negatives is None or len(negatives) == 0 else negatives
    _check_features(positives, "examples")
    if negatives is not None:
        _check_features(negatives, "negatives")
        if negatives.shape[1] != positives.shape[1]:
            raise CategoryError("examples and negatives have features of different widths")
    pos = F.normalize(positives.detach().to("cpu", torch.float64), dim=-1)
    neg = None if negatives is None else F.normalize(negatives.detach().to("cpu", torch.float64), dim=-1)
    return pos, neg


def _fit_rows(pos: torch.Tensor, neg: torch.Tensor | None, method: CategoryMethod) -> tuple[torch.Tensor, float, float]:
    """The weight row, bias and threshold ``method`` fits on normalised rows (cosine to the mean without negatives)."""
    if neg is None:
        if method == "logistic":
            raise CategoryError("method='logistic' needs negatives; give negatives or use method='prototype'")
        return _fit_cosine(pos)
    centre, scale = _standardisation(pos, neg)
    fit = _fit_logistic if method == "logistic" else _fit_prototype
    weight, bias, threshold = fit((pos - centre) / scale, (neg - centre) / scale)
    weight = weight / scale  # folded back: the bank reads the normalised, unstandardised feature
    return weight, bias - float(weight @ centre), threshold


def new_category(
    code: str,
    *,
    level: int,
    name: str | None = None,
    concept: str | None = None,
    action: Action | None = None,
    method: CategoryMethod = "prototype",
    examples: int = 1,
    negatives: int = 0,
    threshold: float = 0.0,
) -> CustomCategory:
    """A :class:`CustomCategory` (name defaults to the code, concept to the name); :class:`CategoryError` if invalid."""
    try:
        return CustomCategory(
            code=code,
            name=name or code,
            concept=concept or name or code,
            level=level,
            action=action,
            method=method,
            examples=examples,
            negatives=negatives,
            features=FEATURES,
            threshold=threshold,
        )
    except ValidationError as err:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise CategoryError(f"invalid custom category {code!r}: {reasons}") from err


def _check_features(features: torch.Tensor, what: str) -> None:
    if features.dim() != 2 or len(features) == 0:
        raise CategoryError(f"a custom category needs at least one of its {what}, got none")
    if not bool(features.isfinite().all()):
        raise CategoryError(f"the guard produced non-finite features for the category's {what}")


def _fit_cosine(pos: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """Without negatives: the cosine to the positives' normalised mean (see the module docstring)."""
    prototype = F.normalize(pos.mean(0), dim=0)
    scores = (pos * F.normalize(_others_mean(pos), dim=-1)).sum(-1)
    threshold = SINGLE_EXAMPLE_SIMILARITY if len(pos) == 1 else float(scores.min())
    gap = float(scores.mean()) - threshold
    if gap < _MIN_GAP:  # one example, or identical ones: the distance to a perfect match sets the scale
        gap = max(1.0 - threshold, _MIN_GAP)
    tau = gap / _SHARPNESS
    return prototype / tau, -threshold / tau, threshold


def _fit_prototype(pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """With negatives, on standardised features: the difference of the class means (see the module docstring)."""
    direction = pos.mean(0) - neg.mean(0)
    pos_scores = (pos * (_others_mean(pos) - neg.mean(0))).sum(-1)
    neg_scores = (neg * (pos.mean(0) - _others_mean(neg))).sum(-1)
    pos_mean = float(pos_scores.mean())
    threshold = (pos_mean + float(neg_scores.mean())) / 2
    if pos_mean - threshold < _MIN_GAP:
        raise CategoryError(_INSEPARABLE)
    tau = (pos_mean - threshold) / _SHARPNESS
    return direction / tau, -threshold / tau, threshold


def _others_mean(rows: torch.Tensor) -> torch.Tensor:
    """Row ``i``: the mean of the other rows (leave-one-out); the row itself when it is the only one."""
    return rows if len(rows) == 1 else (rows.sum(0, keepdim=True) - rows) / (len(rows) - 1)


def _standardisation(pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre (the mean of all rows) and scale that standardise the features to unit variance per dimension
    on average (the RMS distance from the centre over the square root of the width).

    The pooled features of different requests often share most of their direction (cosines near 1), so
    differences only show once that shared part is taken out; the scale makes the logistic regression's L2
    penalty mean the same at every width.
    """
    rows = torch.cat([pos, neg])
    centre = rows.mean(0)
    rms = (rows - centre).norm(dim=-1).pow(2).mean().sqrt()
    return centre, (rms / rows.shape[1] ** 0.5).clamp_min(1e-12)


def _fit_logistic(pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """Class-balanced, L2-regularised logistic regression on standardised features (L-BFGS, float64)."""
    x = torch.cat([pos, neg])
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).to(x.dtype)
    sample_weight = torch.where(y > 0, 0.5 / len(pos), 0.5 / len(neg)).to(x.dtype)
    weight = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    bias = torch.zeros((), dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=_LOGISTIC_STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = x @ weight + bias
        loss = (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * sample_weight).sum()
        loss = loss + _LOGISTIC_L2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    if not bool(torch.isfinite(weight).all() and torch.isfinite(bias)):
        raise CategoryError("the logistic fit of the category diverged")
    weight = weight.detach()
    gap = float((pos @ weight).mean() - (neg @ weight).mean())  # in-sample: the fit cannot do better elsewhere
    if gap < _MIN_GAP:
        raise CategoryError(_INSEPARABLE)
    return weight, float(bias.detach()), 0.0
