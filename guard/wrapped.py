"""``GuardedModel``: a drop-in stand-in for a LLaVA model whose ``generate`` is guarded.

Existing app code keeps its processor call and changes one line::

    model = guard.wrap(model)
    ids = model.generate(**processor(images=image, text=chat, return_tensors="pt"), max_new_tokens=64)

Each row's images are judged with the row's text, from the ``pixel_values`` the app already computed (one
vision pass, reused for the answer). Rows come back as ``input_ids`` + answer tokens, like the plain
model's: an allowed or hinted row holds the generated tokens, a refused row the refusal text's tokens, and
a blocked row raises :class:`~psaguard.errors.GuardBlocked`. Requests without ``pixel_values`` have no
image to judge and go to the model unchanged. Only ``generate`` is guarded; ``.model`` is the plain model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F

from psaguard.backbones import resolve_backbone
from psaguard.errors import CheckpointMismatchError, GuardBlocked, InvalidInputError
from psaguard.generation import (
    GenerationOptions,
    GuardedGeneration,
    check_generate_kwargs,
    eos_token_ids,
    pad_token_id,
    resolve_action,
    tokenizer_of,
    until_eos,
    worst_verdict,
)
from psaguard.injection import build_llm_inputs, collapse_image_runs
from psaguard.policy import decide
from psaguard.verdict import SafetyVerdict

if TYPE_CHECKING:
    from psaguard.guard import SafetyGuard

__all__ = ["GuardedModel"]

logger = logging.getLogger(__name__)

# Attributes apps commonly read from the model they generate with; everything else stays on `.model`, so
# nothing unguarded (forward, __call__) is reachable through the wrapper by accident.
_DELEGATED = frozenset({"config", "generation_config", "device", "dtype", "name_or_path", "can_generate", "eval"})

# Rendered in place of the user's text to find where a chat template's generation prompt starts.
_SENTINEL = "PSAGUARDSENTINEL"
_MAX_SUFFIX_TOKENS = 64


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
            guard = type(guard)(model, guard.processor, guard.config, guard.modules, backbone)
        self.guard = guard
        self.model = guard.model
        self.options = options or GenerationOptions()
        self._generation_suffix = _generation_suffix(guard.processor)

    def __getattr__(self, name: str) -> Any:
        if name in _DELEGATED:
            return getattr(self.model, name)
        raise AttributeError(f"GuardedModel guards generate() only; use .model.{name} on the plain model")

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
        check_generate_kwargs(generate_kwargs)
        if input_ids is None:
            raise InvalidInputError("GuardedModel.generate needs input_ids (inputs_embeds cannot be judged)")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if pixel_values is None:
            logger.debug("no pixel_values: nothing for the image guard to judge, generating unguarded")
            with torch.inference_mode():
                return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs), []
        guard = self.guard
        tokenizer = tokenizer_of(guard.processor)
        image_token_id = guard.backbone.image_token_id
        with torch.inference_mode():
            features = guard.backbone.encode_images(pixel_values=pixel_values)
            image_embeds = list(guard.backbone.project(features))
        per_image = image_embeds[0].shape[0]
        rows = [
            collapse_image_runs(ids[mask.bool()].tolist(), image_token_id, per_image)
            for ids, mask in zip(input_ids.cpu(), attention_mask.cpu())
        ]
        counts = [row.count(image_token_id) for row in rows]
        if sum(counts) != len(image_embeds):
            raise InvalidInputError(f"input_ids hold {sum(counts)} images but pixel_values {len(image_embeds)}")
        owners = [row_index for row_index, count in enumerate(counts) for _ in range(count)]
        prompts = [_visible_text(tokenizer, rows[owner], image_token_id) for owner in owners]
        verdicts = _verdicts(guard, features, prompts, start)

        if 0 in counts:
            raise InvalidInputError(f"row {counts.index(0)} has no image; batch text-only requests separately")

        decided: list[tuple[list[SafetyVerdict], SafetyVerdict]] = []
        llm_rows, llm_images, fixed = [], [], {}
        for index, row in enumerate(rows):
            row_verdicts = [v for v, owner in zip(verdicts, owners) if owner == index]
            verdict = worst_verdict(row_verdicts)
            if verdict.action == "block":
                raise GuardBlocked(verdict, f"row {index} blocked by psaguard policy (rule {verdict.rule!r})")
            decided.append((row_verdicts, verdict))
            resolution = resolve_action(verdict, self.options)
            if resolution.runs_model:
                llm_rows.append((index, self._with_hint(tokenizer, row, resolution.hint), resolution.hint))
                llm_images.extend(image_embeds[i] for i, owner in enumerate(owners) if owner == index)
            else:
                fixed[index] = tokenizer(resolution.text, add_special_tokens=False)["input_ids"]

        eos_ids = eos_token_ids(self.model, generate_kwargs)
        answers: dict[int, tuple[list[int], int, bool]] = {}
        if llm_rows:
            inputs = build_llm_inputs(
                [row for _, row, _ in llm_rows],
                llm_images,
                image_token_id=image_token_id,
                pad_token_id=pad_token_id(tokenizer, self.model),
                llm_tokens=guard.modules.llm_tokens.detach() if guard.config.tokens.inject_llm_tokens else None,
                device=guard.backbone.device,
            )
            with torch.inference_mode():
                sequences = self.model.generate(**inputs.generate_kwargs(), **generate_kwargs)
            width = inputs.input_ids.shape[1]
            for position, (index, _, _) in enumerate(llm_rows):
                new = until_eos(sequences[position, width:].tolist(), eos_ids)
                answers[index] = (new, inputs.prompt_lengths[position], True)
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else sorted(eos_ids)[:1]
        for index, tokens in fixed.items():
            answers[index] = ([*tokens, *eos], 0, False)

        hints = {index: hint for index, _, hint in llm_rows}
        latency_ms = (time.perf_counter() - start) * 1000.0
        results = [
            GuardedGeneration(
                text=tokenizer.decode(answers[index][0], skip_special_tokens=True),
                verdict=verdict,
                verdicts=row_verdicts,
                action=verdict.action,
                hint=hints.get(index),
                generated=answers[index][2],
                prompt_tokens=answers[index][1],
                completion_tokens=len(answers[index][0]) if answers[index][2] else 0,
                latency_ms=latency_ms,
            )
            for index, (row_verdicts, verdict) in enumerate(decided)
        ]
        pad = pad_token_id(tokenizer, self.model)
        return _join(input_ids, [answers[i][0] for i in range(len(rows))], pad), results

    def _with_hint(self, tokenizer: Any, row: list[int], hint: str | None) -> list[int]:
        """Splice the hint's tokens in before the chat template's generation prompt (end of the user turn)."""
        if hint is None:
            return row
        hint_ids = tokenizer(self.options.hint_template.format(hint=hint), add_special_tokens=False)["input_ids"]
        position = _suffix_start(tokenizer, row, self._generation_suffix)
        return [*row[:position], *hint_ids, *row[position:]]


def _verdicts(guard: SafetyGuard, features: Any, prompts: Sequence[str], start: float) -> list[SafetyVerdict]:
    """Verdicts from already encoded images, deciding exactly as ``SafetyGuard.analyze`` does."""
    with torch.inference_mode():
        logits = guard.head_logits(features, prompts)
    head = guard.config.head
    level_probs = F.softmax(logits.level.float() / head.level_temperature, dim=-1)
    type_probs = F.softmax(logits.type.float() / head.type_temperature, dim=-1)
    elapsed = (time.perf_counter() - start) * 1000.0
    return [
        decide(level_probs[i].tolist(), type_probs[i].tolist(), guard.policy, guard.config.taxonomy, elapsed)
        for i in range(len(prompts))
    ]


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
