"""Idefics3 and SmolVLM: ``Idefics3ForConditionalGeneration`` / ``SmolVLMForConditionalGeneration``.

The generic adapter reads them whole: the processor's runs (per tile ``<fake_token_around_image><row_i_col_j>``
+ image tokens, then ``<global-img>`` + image tokens for the global view), and ``get_image_features``'
embeddings (the model drops the all-zero padding tiles of a batch and pixel-shuffles each real tile). The
overrides: the safety projector reads each image's global view (the last tile, :attr:`view_tile`) on the
tower's own grid; the language model lives in ``text_model``; and ``wrap()``, which gets the processor's ids
without the runs' tile grids, reads them back from the tile tags.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from psaguard.backbones.generic import GenericBackbone
from psaguard.backbones.generic_processor import RUNS, padded_runs
from psaguard.backbones.registry import register_backbone

__all__ = ["Idefics3Backbone", "SmolVLMBackbone"]


@register_backbone
class Idefics3Backbone(GenericBackbone):
    """Hugging Face Idefics3: tiles plus a global view, pixel shuffle, tagged tiles in the image run."""

    family = "idefics3"
    model_types = ("idefics3",)
    fallback = False
    image_input_names = ("pixel_attention_mask", RUNS)
    view_tile = -1
    max_grid_side = None
    language_model_name = "text_model"
    unquantized_modules = ("model.vision_model", "model.connector", "lm_head")
    _runs_by_grid: Any = None  # (run of a tile grid, tag id -> grid or None for the global view), from the processor

    def read_processor(self, processor: Any) -> None:
        """The generic reading, and the processor's run per tile grid (``replace_image_token``) with its tags."""
        super().read_processor(processor)
        tokenizer, replace = processor.tokenizer, getattr(processor, "replace_image_token", None)

        @lru_cache(maxsize=64)
        def run(rows: int, cols: int) -> tuple[int, ...]:
            text = replace({"rows": [[rows]], "cols": [[cols]]}, 0)
            return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])

        names = {f"<row_{i}_col_{j}>": (i, j) for i in range(1, 7) for j in range(1, 7)} | {"<global-img>": None}
        ids = {name: tokenizer.convert_tokens_to_ids(name) for name in names}
        tags = {ids[name]: grid for name, grid in names.items() if ids[name] not in (None, tokenizer.unk_token_id)}
        self._runs_by_grid = (run, tags) if callable(replace) else None

    def image_inputs_from_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each image's run, from its tile tags: the processor writes them between one image's tokens."""
        if self._runs_by_grid is None:
            return {}
        run, tags = self._runs_by_grid
        runs, rows, cols = [], 0, 0
        for token in input_ids[attention_mask.bool()].tolist():
            if tags.get(token, ()) is None:  # the global view closes an image
                runs.append(run(rows, cols))
                rows = cols = 0
            elif token in tags:
                rows, cols = max(rows, tags[token][0]), max(cols, tags[token][1])
        return {RUNS: padded_runs(runs)} if runs else {}


@register_backbone
class SmolVLMBackbone(Idefics3Backbone):
    """Hugging Face SmolVLM: Idefics3's layout, with its own processor's run text."""

    family = "smolvlm"
    model_types = ("smolvlm",)
