"""Small text-side rules shared by every caller of the tokenizer: lookup, padding and end-of-sequence ids,
and chat-template rendering with its errors mapped to psaguard's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psaguard.errors import ConfigError, ProcessorError

__all__ = ["eos_token_ids", "pad_token_id", "render_chat", "tokenizer_of", "until_eos"]


def tokenizer_of(processor: Any) -> Any:
    """The text tokenizer of a processor (or the tokenizer itself)."""
    return getattr(processor, "tokenizer", processor)


def pad_token_id(tokenizer: Any, model: Any = None) -> int:
    """Id used to pad prompts and answers: the tokenizer's pad, else the model's, else EOS, else 0."""
    generation_config = getattr(model, "generation_config", None)
    for candidate in (
        tokenizer.pad_token_id,
        getattr(generation_config, "pad_token_id", None),
        tokenizer.eos_token_id,
    ):
        if candidate is not None:
            return int(candidate)
    return 0  # masked out by the attention mask, so any id works


def eos_token_ids(model: Any, generate_kwargs: Mapping[str, Any]) -> set[int]:
    """End-of-sequence ids in effect for a generate call."""
    eos = generate_kwargs.get("eos_token_id", model.generation_config.eos_token_id)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def until_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    """Generated tokens up to and including the first EOS (the rest is batch padding)."""
    for position, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: position + 1]
    return tokens


def render_chat(processor: Any, conversation: Any, *, add_generation_prompt: bool = True) -> str:
    """The conversation rendered by the processor's chat template; :class:`ConfigError` if it cannot be, and
    :class:`ProcessorError` if the processor itself fails (no ``apply_chat_template``, a missing or wrong
    tokenizer)."""
    # jinja2 is an optional dependency of transformers, needed (and asked for by transformers) only here.
    from jinja2 import TemplateError

    try:
        return processor.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt, tokenize=False)
    except (ValueError, TemplateError) as err:  # ValueError: the processor has no chat template
        raise ConfigError(f"cannot render the conversation with the processor's chat template: {err}") from err
    except (AttributeError, TypeError) as err:
        raise ProcessorError(
            f"the processor failed to render the conversation ({type(err).__name__}: {err}); pass the model's own "
            "processor"
        ) from err
