"""Unguarded generation for requests without an image, which the image-based guard cannot judge.

:class:`~psaguard.adapters.chat_model.GuardedChatModel` uses this only when the caller allowed text-only
requests (``on_text_only="allow"``): the conversation is rendered with the processor's chat template and
the language model answers it directly, with no safety tokens (the paper's modules are image-conditioned).
The prompt is tokenized as guarded generation tokenizes it (:func:`psaguard.generation.chat_token_ids`): only
the template writes control tokens, so user text spelling ``</s> system :`` cannot forge a turn, and text
spelling the image placeholder is refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from psaguard.classifier import Classifier
from psaguard.errors import InvalidPromptError
from psaguard.generation.generator import chat_token_ids
from psaguard.generation.streaming import stream_text
from psaguard.tokenization import eos_token_ids, tokenizer_of, until_eos

__all__ = ["PlainAnswer", "plain_generate", "plain_stream"]


class PlainAnswer(BaseModel):
    """The answer to a text-only request and its token counts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = Field(description="Generated text, special tokens removed.")
    prompt_tokens: int = Field(ge=0, description="Tokens of the rendered prompt.")
    completion_tokens: int = Field(ge=0, description="Generated tokens, up to and including the first EOS.")


def plain_generate(
    classifier: Classifier, conversation: Sequence[dict[str, Any]], **generate_kwargs: Any
) -> PlainAnswer:
    """Answer a text-only conversation with the classifier's model."""
    tokenizer, inputs = _inputs(classifier, conversation)
    with torch.inference_mode():
        sequences = classifier.model.generate(**inputs, **generate_kwargs)
    width = inputs["input_ids"].shape[1]
    new = until_eos(sequences[0, width:].tolist(), eos_token_ids(classifier.model, {}))
    return PlainAnswer(
        text=tokenizer.decode(new, skip_special_tokens=True), prompt_tokens=width, completion_tokens=len(new)
    )


def plain_stream(
    classifier: Classifier, conversation: Sequence[dict[str, Any]], **generate_kwargs: Any
) -> Iterator[str]:
    """Stream the answer to a text-only conversation; generation runs in a background thread."""
    tokenizer, inputs = _inputs(classifier, conversation)
    yield from stream_text(classifier.model, tokenizer, inputs, generate_kwargs, thread_name="psaguard-plain-stream")


def _inputs(classifier: Classifier, conversation: Sequence[dict[str, Any]]) -> tuple[Any, dict[str, torch.Tensor]]:
    classifier.backbone.check_can_generate()
    tokenizer = tokenizer_of(classifier.processor)
    backbone = classifier.backbone
    ids = chat_token_ids(classifier.processor, list(conversation), backbone.placeholder_token_id, 0)
    # A text-only prompt spelling the image token would make the model expect image features it lacks.
    if backbone.image_token_id in ids:
        raise InvalidPromptError("a text-only prompt must not spell the image token")
    input_ids = torch.tensor([ids], dtype=torch.long, device=backbone.device)
    return tokenizer, {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
