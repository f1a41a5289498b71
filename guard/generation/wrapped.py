"""``GuardedModel``: a drop-in stand-in for a LLaVA model whose ``generate`` is guarded.

Existing app code keeps its processor call and changes one line::

    model = guard.wrap(model)
    ids = model.generate(**processor(images=image, text=chat, return_tensors="pt"), max_new_tokens=64)

Each row's images are judged with the row's text, from the ``pixel_values`` the app already computed (one
vision pass, reused for the answer); the other image tensors the family's processor returns (the backbone's
``image_input_names``, e.g. LLaVA-NeXT's ``image_sizes``) go to that vision pass too. Rows come back as
``input_ids`` + answer tokens, like the plain model's: an allowed or hinted row holds the generated tokens,
a refused row the refusal text's tokens, and a blocked row raises :class:`~psaguard.errors.GuardBlocked`.
Requests without ``pixel_values`` have no image to judge and go to the model unchanged. Only ``generate`` is
guarded; ``.model`` is the plain model.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from psaguard.backbones import Backbone, registered_backbones
from psaguard.classifier import Classifier
from psaguard.errors import ConfigError, InvalidInputError, ProcessorError
from psaguard.generation.generator import check_generate_kwargs
from psaguard.generation.plan import GenerationPlan, GuardedGeneration, RequestPlan, plan_request
from psaguard.injection import collapse_image_runs
from psaguard.policy import GenerationOptions
from psaguard.tokenization import eos_token_ids, pad_token_id, render_chat, tokenizer_of
from psaguard.verdict import SafetyVerdict

__all__ = ["GuardedModel"]

logger = logging.getLogger(__name__)

# Attributes apps commonly read from the model they generate with; everything else stays on `.model`, so
# nothing unguarded (forward, __call__) is reachable through the wrapper by accident.
_DELEGATED = frozenset({"config", "generation_config", "device", "dtype", "name_or_path", "can_generate"})

# Rendered in place of the user's text to find where a chat template's generation prompt starts.
_SENTINEL = "PSAGUARDSENTINEL"
_MAX_SUFFIX_TOKENS = 64


class GuardedModel:
    """A vision-language model whose ``generate(**processor(...))`` goes through a guard's classifier.

    Build it with ``guard.wrap(model)``. ``model`` defaults to the guard's own; another instance must
    have the same architecture (same fingerprint), e.g. the same checkpoint loaded in 4-bit.
    """

    def __init__(
        self,
        classifier: Classifier,
        model: torch.nn.Module | None = None,
        *,
        options: GenerationOptions | None = None,
    ) -> None:
        classifier = classifier if model is None else classifier.for_model(model)
        classifier.backbone.check_can_generate()  # wrapping a classifier-only guard's own (LLM-less) model
        self.classifier = classifier
        self.model = classifier.model
        self.options = options or GenerationOptions()
        self._generation_suffix = _generation_suffix(classifier.processor)

    def __getattr__(self, name: str) -> Any:
        if name in _DELEGATED:
            return getattr(self.model, name)
        raise AttributeError(f"GuardedModel guards generate() only; use .model.{name} on the plain model")

    def eval(self) -> GuardedModel:
        """Put the model in eval mode; returns the wrapper (not the plain model), so chained calls stay guarded."""
        self.model.eval()
        return self

    def __repr__(self) -> str:
        return f"GuardedModel({type(self.model).__name__}, family={self.classifier.backbone.family!r})"

    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Same call and output as the model's ``generate``: ``(B, prompt + answer)`` token ids."""
        return self.generate_with_results(input_ids, attention_mask, pixel_values, **generate_kwargs)[0]

    def generate_with_results(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> tuple[torch.Tensor, list[GuardedGeneration]]:
        """:meth:`generate` plus one :class:`GuardedGeneration` per row (verdicts, action, decoded answer)."""
        start = time.perf_counter()
        image_inputs = self._pop_image_inputs(generate_kwargs)
        check_generate_kwargs(generate_kwargs)
        if input_ids is None:
            raise InvalidInputError("GuardedModel.generate needs input_ids (inputs_embeds cannot be judged)")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if pixel_values is None and image_inputs:
            raise InvalidInputError(f"got {sorted(image_inputs)} but no pixel_values")
        if pixel_values is None:
            logger.debug("no pixel_values: nothing for the image guard to judge, generating unguarded")
            with torch.inference_mode():
                return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs), []
        image_inputs = {**self.classifier.backbone.image_inputs_from_ids(input_ids, attention_mask), **image_inputs}
        plan = self._plan(input_ids, attention_mask, pixel_values, image_inputs, start)
        sequences = plan.generate(generate_kwargs)
        answers = plan.answers(sequences, generate_kwargs)
        results = plan.results(sequences, start, generate_kwargs)
        tokenizer = plan.tokenizer
        eos_ids = eos_token_ids(self.model, generate_kwargs)
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else sorted(eos_ids)[:1]
        rows = [
            answers[index]
            if index in answers and not r.stopped
            else [*tokenizer(r.text, add_special_tokens=False)["input_ids"], *eos]
            for index, r in enumerate(results)
        ]
        return _join(input_ids, rows, pad_token_id(tokenizer, self.model)), results

    def _pop_image_inputs(self, generate_kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Take the family's image tensors besides ``pixel_values`` (processor outputs) out of ``generate_kwargs``."""
        backbone = self.classifier.backbone
        _check_image_input_names(backbone, generate_kwargs)
        popped = {name: generate_kwargs.pop(name, None) for name in backbone.image_input_names}
        for name in backbone.derived_input_names:  # rebuilt for the guarded input
            generate_kwargs.pop(name, None)
        return {name: value for name, value in popped.items() if value is not None}

    def _plan(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        image_inputs: dict[str, torch.Tensor],
        start: float,
    ) -> GenerationPlan:
        """One vision pass: verdicts per image, the plan of each row, and the rows' prompt ids (hint spliced in)."""
        classifier = self.classifier
        backbone = classifier.backbone
        tokenizer = tokenizer_of(classifier.processor)
        with torch.inference_mode():
            features = backbone.encode_images(pixel_values, **image_inputs)
            image_embeds = backbone.project(features)
        # The processor wrote each image's run as the adapter does: one image token per embedding.
        layout = backbone.image_layout(features, image_embeds)
        token_rows = collapse_image_runs(
            [ids[mask.bool()].tolist() for ids, mask in zip(input_ids.cpu(), attention_mask.cpu())], layout
        )
        owners = _image_owners(token_rows, layout.placeholder)
        prompts = [_visible_text(tokenizer, token_rows[owner], layout.placeholder) for owner in owners]
        judged = classifier.judge_encoded(features, prompts, start)
        requests = [
            self._row_request(index, token_row, owners, judged.verdicts, prompts, tokenizer)
            for index, token_row in enumerate(token_rows)
        ]
        return GenerationPlan(classifier, requests, features, judged.memory)

    def _row_request(
        self,
        index: int,
        token_row: list[int],
        owners: list[int],
        verdicts: list[SafetyVerdict],
        prompts: list[str],
        tokenizer: Any,
    ) -> RequestPlan:
        """The plan of row ``index`` from its images' verdicts; a row that runs the model gets its prompt ids,
        the hint spliced in."""
        images = [i for i, owner in enumerate(owners) if owner == index]
        request = plan_request([verdicts[i] for i in images], images, self.options, where=f"row {index}")
        if not request.runs_model:
            return request
        return request.with_tokens(self._with_hint(tokenizer, token_row, request), prompts[images[0]])

    def _with_hint(self, tokenizer: Any, row: list[int], request: RequestPlan) -> list[int]:
        """Splice the hint's tokens in before the chat template's generation prompt (end of the user turn)."""
        if request.hint is None:
            return row
        hint_ids = tokenizer(self.options.hint_text(request.hint), add_special_tokens=False)["input_ids"]
        position = _suffix_start(tokenizer, row, self._generation_suffix)
        return [*row[:position], *hint_ids, *row[position:]]


def _check_image_input_names(backbone: Backbone, generate_kwargs: dict[str, Any]) -> None:
    """Refuse image inputs the guard cannot judge, and those of another model family's processor."""
    if unjudged := [name for name in backbone.unjudged_input_names if generate_kwargs.get(name) is not None]:
        raise InvalidInputError(f"{unjudged} cannot be judged by the image guard; send images only")
    own = {*backbone.image_input_names, *backbone.derived_input_names}
    every = {n for b in registered_backbones() for n in (*b.image_input_names, *b.derived_input_names)}
    if stray := [name for name in sorted(every - own) if generate_kwargs.get(name) is not None]:
        raise InvalidInputError(
            f"{stray} come from another model family's processor; {backbone.family!r} models do not take them"
        )


def _image_owners(token_rows: list[list[int]], placeholder: int) -> list[int]:
    """The row of each image, in order (one placeholder per image); a row without an image is refused."""
    counts = [row.count(placeholder) for row in token_rows]
    if 0 in counts:
        raise InvalidInputError(f"row {counts.index(0)} has no image; batch text-only requests separately")
    return [index for index, count in enumerate(counts) for _ in range(count)]


def _visible_text(tokenizer: Any, row: list[int], image_token_id: int) -> str:
    """The row's text as the head reads it: special tokens and image placeholders dropped."""
    return tokenizer.decode([t for t in row if t != image_token_id], skip_special_tokens=True).strip()


def _generation_suffix(processor: Any) -> str | None:
    """What the chat template writes after a user turn's text (end of turn + generation prompt), or None."""
    probe = [{"role": "user", "content": [{"type": "text", "text": _SENTINEL}]}]
    try:
        rendered = render_chat(processor, probe)
    except (ConfigError, ProcessorError):
        return None
    return rendered.split(_SENTINEL, 1)[1] if _SENTINEL in rendered else None


def _suffix_start(tokenizer: Any, row: list[int], suffix: str | None) -> int:
    """Index where ``suffix`` starts in ``row`` (compared without whitespace); the row's end if not found."""
    if suffix is not None:
        target = "".join(suffix.split())
        if not target:
            return len(row)
        for k in range(1, min(len(row), _MAX_SUFFIX_TOKENS) + 1):
            if "".join(tokenizer.decode(row[-k:], skip_special_tokens=False).split()) == target:
                return len(row) - k
    logger.warning("could not find the chat template's generation prompt; appending the safety hint at the end")
    return len(row)


def _join(input_ids: torch.Tensor, answers: list[list[int]], pad_id: int) -> torch.Tensor:
    """``input_ids`` with each row's answer appended, right-padded like ``generate`` pads finished rows."""
    width = max((len(a) for a in answers), default=0)
    tail = torch.full((len(answers), width), pad_id, dtype=input_ids.dtype)
    for i, answer in enumerate(answers):
        tail[i, : len(answer)] = torch.tensor(answer, dtype=input_ids.dtype)
    return torch.cat([input_ids, tail.to(input_ids.device)], dim=1)
