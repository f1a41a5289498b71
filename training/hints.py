"""Safety hints in training prompts: the text guarded generation adds for a row's labels.

At inference the guard appends a "Safe Hint" line to the last user turn when its verdict calls for a
hint (:mod:`psaguard.generation`). The paper adds hints at inference only, so its language model is never
trained on them and may ignore them. With ``TrainConfig.train_with_hints`` the trainer appends, to each
row, the exact hint the guard would add if the head predicted that row's labels, so the model learns to
follow the hints it will be given. The safety head never reads the hint (it would read its own labels).
"""

from __future__ import annotations

from collections.abc import Callable

from psaguard.policy import GenerationOptions, GuardPolicy, decide, resolve_action
from psaguard.taxonomy import Taxonomy
from psaguard.training.data import Example

__all__ = ["label_hint", "label_hinter"]


def label_hint(
    level: int, type_id: int, policy: GuardPolicy, taxonomy: Taxonomy, options: GenerationOptions
) -> str | None:
    """The text guarded generation appends to the last user turn for a certain verdict of these labels."""
    level_probs = [float(k == level) for k in range(taxonomy.num_levels)]
    type_probs = [float(k == type_id) for k in range(taxonomy.num_types)]
    resolution = resolve_action(decide(level_probs, type_probs, policy, taxonomy), options)
    return None if resolution.hint is None else options.hint_template.format(hint=resolution.hint)


def label_hinter(
    policy: GuardPolicy, taxonomy: Taxonomy, options: GenerationOptions | None = None
) -> Callable[[Example], str | None]:
    """``example -> hint text or None`` for :class:`~psaguard.training.collate.Collator`."""
    options = options or GenerationOptions()
    return lambda example: label_hint(example.level, example.type, policy, taxonomy, options)
