"""A guarded request: its images and its conversation, the unit every path judges.

``SafetyGuard.classify_requests``, guarded generation, the LangChain adapters and the server all build
:class:`GuardRequest` objects and hand them to :meth:`psaguard.classifier.Classifier.judge_requests`, which
owns the grouping (a request's images are preprocessed together), the worst-verdict rule and the text-only
rule; so the same request gets the same verdict whichever path it takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from psaguard.backbones import VisionFeatures
from psaguard.conversation import PromptInput, judged_text, to_conversation
from psaguard.images.decode import ImageInput
from psaguard.verdict import SafetyVerdict

__all__ = ["GuardRequest", "RequestJudgement"]


class GuardRequest(BaseModel):
    """One request as the guard sees it: its images, the text it judges them with, and the conversation.

    ``conversation`` is a Hugging Face chat conversation whose ``{"type": "image"}`` parts stand for
    ``images`` in order, ready for a processor's chat template.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    images: tuple[Any, ...] = Field((), description="The request's images (anything `classify` accepts), in order.")
    prompt: str = Field("", description="Text the guard judges the images with: the text of every judged turn.")
    conversation: tuple[dict[str, Any], ...] = Field(
        (), description="HF chat conversation with {'type': 'image'} placeholders for `images`."
    )

    @classmethod
    def of(cls, images: Sequence[ImageInput], prompt: PromptInput) -> GuardRequest:
        """The request of ``images`` and a user string or chat conversation (validated; roles checked)."""
        conversation = to_conversation(prompt, len(images))
        return cls(images=tuple(images), prompt=judged_text(conversation), conversation=tuple(conversation))


@dataclass(frozen=True)
class RequestJudgement:
    """Verdicts of a batch of requests, and the one vision pass they came from (reused by generation).

    ``verdicts[r]`` decides request ``r``: the most severe verdict of its images, or the text-only verdict
    when it holds none. ``image_verdicts[r]`` are its images' own verdicts, in order; ``rows[r]`` are their
    rows in ``features``, or None when not all of its images could be judged. ``memory`` holds the safety
    heads' keys and values of the same rows (None with ``features``), reused by the streaming monitor.
    """

    verdicts: list[SafetyVerdict]
    image_verdicts: list[list[SafetyVerdict]]
    rows: list[list[int] | None]
    features: VisionFeatures | None
    memory: torch.Tensor | None = None
