"""What the generic adapter reads from a model and its processor: the interface, the template's image text, runs.

A model follows the interface when its multimodal part has ``get_image_features`` and a ``forward`` taking
``mm_encoder_outputs``, and its config names an image token (:func:`unsupported_reason` says why not).

The chat template's text for one image part (e.g. ``<|vision_start|><|image_pad|><|vision_end|>``) is read by
rendering a turn with and without an image; its placeholder is the image token where the text holds it, else
its one special token (Gemma 3's ``<start_of_image>``, which the processor replaces by the run). Each image's
run is what the processor writes for that text, around the placeholder's neighbours.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import nn

from psaguard.errors import ProcessorError
from psaguard.tokenization import render_chat

__all__ = [
    "CROSS_ATTENTION_TYPES",
    "PIXEL_NAMES",
    "PREFIX_LM_TYPES",
    "RUNS",
    "find_placeholder",
    "image_processor_outputs",
    "image_token_id_of",
    "model_parts",
    "padded_runs",
    "process_images",
    "processor_runs",
    "special_token_id",
    "stored_runs",
    "token_type_rule",
    "unsupported_reason",
]

PIXEL_NAMES = ("pixel_values", "pixel_values_images")
"""Names processors give the images' pixels under."""
RUNS = "image_runs"
"""Key of the preprocessed inputs holding each image's run as the processor writes it (padded with -1)."""
CROSS_ATTENTION_TYPES: frozenset[str] = frozenset({"mllama", "idefics"})
"""Model types whose language model reads images through cross-attention layers, not image tokens."""
PREFIX_LM_TYPES: frozenset[str] = frozenset({"paligemma"})
"""Model types whose ``token_type_ids`` mark the answer (prefix-LM attention): the guard's input builder sees
the prompt and the features only, so training would let the answer attend ahead; such a family needs its own
adapter."""


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` does not follow the interface the generic adapter uses (None: it does)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if config is None:
        return "it has no transformers config"
    if model_type in CROSS_ATTENTION_TYPES:
        return "its language model reads images through cross-attention layers, not image tokens"
    if model_type in PREFIX_LM_TYPES:
        return "its prefix-LM token_type_ids mark the answer, which the generic input builder does not see"
    if getattr(config, "is_encoder_decoder", False):
        return "it is an encoder-decoder model; images do not enter a decoder's input as tokens"
    if not isinstance(image_token_id_of(config), int):
        return "its config names no image token id (config.image_token_id) for image positions in input_ids"
    parts = model_parts(model)
    if not callable(getattr(parts, "get_image_features", None)):
        return "it has no get_image_features (projected image features from one vision pass)"
    if "mm_encoder_outputs" not in inspect.signature(parts.forward).parameters:
        return "its forward takes no precomputed image features (mm_encoder_outputs)"
    return None


def model_parts(model: nn.Module) -> nn.Module:
    """Where the model keeps ``get_image_features`` and its parts (``model.model`` of a ...ForConditionalGeneration)."""
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) and hasattr(inner, "get_image_features") else model


def image_token_id_of(config: Any) -> int | None:
    """The config's image token id (``image_token_id`` or ``image_token_index``), None where it names none."""
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def image_processor_outputs(processor: Any, images: Sequence[Image.Image], family: str) -> Any:
    """Run the processor's image processor on ``images``; :class:`ProcessorError` if it has none or fails."""
    image_processor = getattr(processor, "image_processor", processor)
    if not callable(image_processor):
        raise ProcessorError(
            f"{type(processor).__name__} has no image processor; pass the {family!r} model's processor"
        )
    try:
        return image_processor(images=list(images), return_tensors="pt")
    except (TypeError, ValueError, KeyError) as err:
        raise ProcessorError(f"the processor cannot prepare images for a {family!r} model: {err}") from err


def special_token_id(tokenizer: Any, text: str, family: str) -> int:
    """The id of a special token a family's processor writes; :class:`ProcessorError` if the tokenizer lacks it."""
    token_id = tokenizer.convert_tokens_to_ids(text)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ProcessorError(f"the processor's tokenizer lacks {text!r}: it is not a {family!r} processor")
    return token_id


def find_placeholder(processor: Any, image_token_id: int, family: str) -> tuple[str, int]:
    """(the template's text for one image, its placeholder id); :class:`ProcessorError` if it has none."""
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or not callable(getattr(processor, "image_processor", None)):
        raise ProcessorError(f"{type(processor).__name__} is not a {family!r} processor (no image processor)")
    snippet = _template_image_text(processor) or tokenizer.convert_ids_to_tokens(image_token_id)
    ids = list(tokenizer(snippet, add_special_tokens=False)["input_ids"])
    special = set(getattr(tokenizer, "all_special_ids", [])) | set(tokenizer.get_added_vocab().values())
    candidates = [image_token_id] if image_token_id in ids else [t for t in ids if t in special]
    if len(candidates) != 1 or ids.count(candidates[0]) != 1:
        raise ProcessorError(
            f"the chat template writes {snippet!r} per image, with no single image placeholder: it is not a "
            f"{family!r} processor"
        )
    return snippet, candidates[0]


def _template_image_text(processor: Any) -> str | None:
    """What the processor's chat template writes for one image part (None without a usable template)."""
    try:
        with_image, without = (
            render_chat(
                processor,
                [{"role": "user", "content": [*parts, {"type": "text", "text": "x"}]}],
                add_generation_prompt=False,
            )
            for parts in ([{"type": "image"}], [])
        )
    except Exception:
        return None
    start = 0
    while start < min(len(with_image), len(without)) and with_image[start] == without[start]:
        start += 1
    end = 0
    while end < len(without) - start and with_image[len(with_image) - 1 - end] == without[len(without) - 1 - end]:
        end += 1
    return with_image[start : len(with_image) - end] or None


def process_images(processor: Any, texts: list[str], images: Sequence[Image.Image], family: str) -> Any:
    """The processor's output for one image per text: images nested per text, or flat where it takes no nesting."""
    errors = []
    for batch in ([[image] for image in images], list(images)):
        try:
            return processor(text=texts, images=batch, return_tensors="pt", padding=True)
        except (TypeError, ValueError, KeyError, IndexError) as err:
            errors.append(err)
    image_processor_outputs(processor, images, family)  # a ProcessorError if it has no image processor
    raise ProcessorError(f"the processor cannot prepare images for a {family!r} model: {errors[-1]}") from errors[-1]


def processor_runs(out: Any, plain: list[int], token_id: int, image_token_id: int, family: str) -> torch.Tensor:
    """Each image's run in the processor's rows (``plain``: its one-image text alone, tokenized), padded."""
    before, after = plain.index(token_id), len(plain) - plain.index(token_id) - 1
    rows = zip(out["input_ids"], out["attention_mask"].bool())
    runs = [row[keep][before : int(keep.sum()) - after].tolist() for row, keep in rows]
    if any(image_token_id not in run for run in runs):
        raise ProcessorError(f"the processor wrote no image tokens for an image: not a {family!r} processor")
    return padded_runs(runs)


def padded_runs(runs: Sequence[Sequence[int]]) -> torch.Tensor:
    """Images' runs as the preprocessed inputs hold them (``image_runs``: one row each, padded with -1)."""
    width = max(len(run) for run in runs)
    return torch.tensor([[*run, *[-1] * (width - len(run))] for run in runs])


def stored_runs(runs: torch.Tensor | None) -> tuple[tuple[int, ...], ...] | None:
    """Each image's run from the preprocessed inputs (its -1 padding dropped); None without runs."""
    return None if runs is None else tuple(tuple(t for t in run.tolist() if t >= 0) for run in runs)


def token_type_rule(value: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor, image_token_id: int) -> str:
    """How the processor types tokens: 1 at image tokens ("image"), or 0 everywhere ("zeros")."""
    if torch.equal(value[mask].bool(), (input_ids == image_token_id)[mask]):
        return "image"
    if not value[mask].any():
        return "zeros"
    raise ProcessorError("the processor's token types follow a rule the generic adapter does not know")
