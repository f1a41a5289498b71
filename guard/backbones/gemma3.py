"""Gemma 3 family: ``Gemma3ForConditionalGeneration`` (SigLIP tower, pooled soft tokens, Gemma 3 LLM).

The generic adapter reads it whole: the tower's full square patch grid for the safety projector (at 896 px,
64 x 64 patches, before the projector pools it to ``mm_tokens_per_image`` soft tokens), the chat template's
``<start_of_image>`` as the placeholder the processor expands into ``\\n\\n<start_of_image>``, the soft tokens
and ``<end_of_image>\\n\\n``, and ``token_type_ids`` from the processor. The overrides:

* :attr:`Gemma3Backbone.safety_token_type` is 1: image tokens attend to each other bidirectionally (the model
  reads 1 in ``token_type_ids``), and the guard's safety tokens join the image's bidirectional block;
* :meth:`Gemma3Backbone.read_processor` refuses pan-and-scan crops (not supported yet).
"""

from __future__ import annotations

from typing import Any

from psaguard.backbones.generic import GenericBackbone
from psaguard.backbones.generic_processor import RUNS
from psaguard.backbones.registry import register_backbone
from psaguard.errors import ProcessorError

__all__ = ["Gemma3Backbone"]


@register_backbone
class Gemma3Backbone(GenericBackbone):
    """Hugging Face Gemma 3: one square view per image, pooled soft tokens, bidirectional image attention."""

    family = "gemma3"
    model_types = ("gemma3",)
    fallback = False
    image_input_names = (RUNS,)
    safety_token_type = 1

    def read_processor(self, processor: Any) -> None:
        """The generic reading, after refusing pan-and-scan crops (several views per image)."""
        if getattr(getattr(processor, "image_processor", None), "do_pan_and_scan", False):
            raise ProcessorError("Gemma 3 pan-and-scan crops are not supported yet; use do_pan_and_scan=False")
        super().read_processor(processor)
