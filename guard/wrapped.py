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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from psaguard.backbones import VisionFeatures, registered_backbones, resolve_backbone
from psaguard.errors import CheckpointMismatchError, GuardBlocked, InvalidInputError
from psaguard.generation import (
    GenerationOptions,
    GuardedGeneration,
    Resolution,
    check_generate_kwargs,
    eos_token_ids,
    pad_token_id,
    resolve_action,
    tokenizer_of,
    until_eos,
    worst_verdict,
)
from psaguard.injection import build_llm_inputs, collapse_image_runs
from psaguard.verdict import SafetyVerdict

if TYPE_CHECKING:
    from psaguard.guard import SafetyGuard

__all__ = ["GuardedModel"]

logger = logging.getLogger(__name__)

# Attributes apps commonly read from the model they generate with; everything else stays on `.model`, so
# nothing unguarded (forward, __call__) is reachable through the wrapper by accident.
_DELEGATED = frozenset({"config", "generation_config", "device", "dtype", "name_or_path", "can_generate"})

# Rendered in place of the user's text to find where a chat template's generation prompt starts.
_SENTINEL = "PSAGUARDSENTINEL"
_MAX_SUFFIX_TOKENS = 64


@dataclass(frozen=True)
class _Row:
    """One judged row: its prompt ids (one placeholder per image, hint spliced in), images and decision."""

    tokens: list[int]
    images: list[int]
    verdicts: list[SafetyVerdict]
    verdict: SafetyVerdict
    resolution: Resolution


class GuardedModel:
    """A vision-language model whose ``generate(**processor(...))`` goes through a :class:`SafetyGuard`.

    Build it with ``guard.wrap(model)``. ``model`` defaults to the guard's own; another instance must
    have the same architecture (same fingerprint), e.g. the same checkpoint loaded in 4-bit.
    """

    def __init__(
        self, guard: SafetyGuard, model: torch.nn.Module | None = None, *, options: GenerationOptions | None = None
    ) -> None:
        if model is not None and model is not guard.model:
            backbone = resolve_backbone(model)
            if guard.config.fingerprint is not None:
                guard.config.fingerprint.check(backbone.fingerprint())
            elif backbone.fingerprint() != guard.backbone.fingerprint():
                raise CheckpointMismatchError("the model to wrap differs from the guard's model")
            backbone.check_processor(guard.processor)
            guard = type(guard)(model, guard.processor, guard.config, guard.modules, backbone)
        guard.backbone.check_can_generate()  # wrapping a classifier-only guard's own (LLM-less) model
        self.guard = guard
        self.model = guard.model
        self.options = options or GenerationOptions()
        self._generation_suffix = _generation_suffix(guard.processor)

    def __getattr__(self, name: str) -> Any:
        if name in _DELEGATED:
            return getattr(self.model, name)
        raise AttributeError(f"GuardedModel guards generate() only; use .model.{name} on the plain model")

    def eval(self) -> GuardedModel:
        """Put the model in eval mode; returns the wrapper (not the plain model), so chained calls stay guarded."""
        self.model.eval()
        return self

    def __repr__(self) -> str:
        return f"GuardedModel({type(self.model).__name__}, {self.guard!r})"

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
        image_inputs = {**self.guard.backbone.image_inputs_from_ids(input_ids, attention_mask), **image_inputs}
        rows, features, image_embeds = self._judge(input_ids, attention_mask, pixel_values, image_inputs, start)
        generated = self._generate(rows, features, image_embeds, generate_kwargs)
        tokenizer = tokenizer_of(self.guard.processor)
        eos_ids = eos_token_ids(self.model, generate_kwargs)
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else sorted(eos_ids)[:1]
        latency_ms = (time.perf_counter() - start) * 1000.0
        answers, results = [], []
        for index, row in enumerate(rows):
            if index in generated:
                tokens, prompt_tokens = generated[index]
                text = tokenizer.decode(tokens, skip_special_tokens=True)
            else:
                text, prompt_tokens = row.resolution.text, 0
                tokens = [*tokenizer(text, add_special_tokens=False)["input_ids"], *eos]
            answers.append(tokens)
            results.append(
                GuardedGeneration(
                    text=text,
                    verdict=row.verdict,
                    verdicts=row.verdicts,
                    action=row.verdict.action,
                    hint=row.resolution.hint,
                    generated=index in generated,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=len(tokens) if index in generated else 0,
                    latency_ms=latency_ms,
                )
            )
        return _join(input_ids, answers, pad_token_id(tokenizer, self.model)), results

    def _pop_image_inputs(self, generate_kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Take the family's image tensors besides ``pixel_values`` (processor outputs) out of ``generate_kwargs``."""
        backbone = self.guard.backbone
        own = {*backbone.image_input_names, *backbone.derived_input_names}
        foreign = sorted(
            {n for b in registered_backbones() for n in (*b.image_input_names, *b.derived_input_names)} - own
        )
        if stray := [name for name in foreign if generate_kwargs.get(name) is not None]:
            raise InvalidInputError(
                f"{stray} come from another model family's processor; {backbone.family!r} models do not take them"
            )
        popped = {name: generate_kwargs.pop(name, None) for name in backbone.image_input_names}
        for name in backbone.derived_input_names:  # rebuilt for the guarded input
            generate_kwargs.pop(name, None)
        return {name: value for name, value in popped.items() if value is not None}

    def _judge(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        image_inputs: dict[str, torch.Tensor],
        start: float,
    ) -> tuple[list[_Row], VisionFeatures, list[torch.Tensor]]:
        """One vision pass: verdicts per image, the deciding one per row, and the images' LLM embeddings."""
        guard = self.guard
        tokenizer = tokenizer_of(guard.processor)
        image_token_id = guard.backbone.placeholder_token_id
        with torch.inference_mode():
            features = guard.backbone.encode_images(pixel_values, **image_inputs)
            image_embeds = guard.backbone.project(features)
        # The processor wrote each image's run as the adapter does: one image token per embedding.
        token_rows = collapse_image_runs(
            [ids[mask.bool()].tolist() for ids, mask in zip(input_ids.cpu(), attention_mask.cpu())],
            guard.backbone.image_layout(features, image_embeds),
        )
        counts = [row.count(image_token_id) for row in token_rows]
        if 0 in counts:
            raise InvalidInputError(f"row {counts.index(0)} has no image; batch text-only requests separately")
        owners = [index for index, count in enumerate(counts) for _ in range(count)]
        prompts = [_visible_text(tokenizer, token_rows[owner], image_token_id) for owner in owners]
        verdicts = _verdicts(guard, features, prompts, start)
        rows = []
        for index, token_row in enumerate(token_rows):
            images = [i for i, owner in enumerate(owners) if owner == index]
            row_verdicts = [verdicts[i] for i in images]
            verdict = worst_verdict(row_verdicts)
            if verdict.action == "block":
                raise GuardBlocked(verdict, f"row {index} blocked by psaguard policy (rule {verdict.rule!r})")
            resolution = resolve_action(verdict, self.options)
            rows.append(
                _Row(self._with_hint(tokenizer, token_row, resolution.hint), images, row_verdicts, verdict, resolution)
            )
        return rows, features, image_embeds

    def _generate(
        self,
        rows: list[_Row],
        features: VisionFeatures,
        image_embeds: list[torch.Tensor],
        generate_kwargs: dict[str, Any],
    ) -> dict[int, tuple[list[int], int]]:
        """Run the model once for the rows that may be answered: ``{row: (answer ids, prompt positions)}``."""
        answerable = [index for index, row in enumerate(rows) if row.resolution.runs_model]
        if not answerable:
            return {}
        guard = self.guard
        images = [i for index in answerable for i in rows[index].images]
        embeds = [image_embeds[i] for i in images]
        inputs = build_llm_inputs(
            [rows[index].tokens for index in answerable],
            embeds,
            layout=guard.backbone.image_layout(features.subset(images), embeds),
            pad_token_id=pad_token_id(tokenizer_of(guard.processor), self.model),
            llm_tokens=guard.modules.llm_tokens.detach() if guard.config.tokens.inject_llm_tokens else None,
            device=guard.backbone.device,
        )
        with torch.inference_mode():
            sequences = self.model.generate(**inputs.model_kwargs(), **generate_kwargs)
        width = inputs.input_ids.shape[1]
        eos_ids = eos_token_ids(self.model, generate_kwargs)
        return {
            index: (until_eos(sequences[position, width:].tolist(), eos_ids), inputs.prompt_lengths[position])
            for position, index in enumerate(answerable)
        }

    def _with_hint(self, tokenizer: Any, row: list[int], hint: str | None) -> list[int]:
        """Splice the hint's tokens in before the chat template's generation prompt (end of the user turn)."""
        if hint is None:
            return row
        hint_ids = tokenizer(self.options.hint_template.format(hint=hint), add_special_tokens=False)["input_ids"]
        position = _suffix_start(tokenizer, row, self._generation_suffix)
        return [*row[:position], *hint_ids, *row[position:]]


def _verdicts(guard: SafetyGuard, features: Any, prompts: Sequence[str], start: float) -> list[SafetyVerdict]:
    """Verdicts from already encoded images, deciding (and failing closed) exactly as ``SafetyGuard.analyze``."""
    return guard.judge_features(features, prompts, start)


def _visible_text(tokenizer: Any, row: Sequence[int], image_token_id: int) -> str:
    """The row's text as the head reads it: special tokens and image placeholders dropped."""
    return tokenizer.decode([t for t in row if t != image_token_id], skip_special_tokens=True).strip()


def _generation_suffix(processor: Any) -> str | None:
    """What the chat template writes after a user turn's text (end of turn + generation prompt), or None."""
    probe = [{"role": "user", "content": [{"type": "text", "text": _SENTINEL}]}]
    try:
        rendered = processor.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)
    except (ValueError, AttributeError, TypeError):
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
