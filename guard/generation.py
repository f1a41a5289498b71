"""Guarded generation: judge a request, then allow, hint, refuse or block its answer, with one vision pass.

:class:`GuardedGenerator` is what ``SafetyGuard.generate`` / ``generate_batch`` / ``stream`` run:

1. every image of a request is judged with the text of the request's turns (``guard.analyze``; one vision pass);
2. the worst verdict decides (actions order allow < hint < refuse < block, ties by level);
3. allow and hint run the language model on the chat-templated prompt (a hint is appended to the last user
   turn, as the paper's "Safe Hint"), with ``llm_tokens`` placed before each image's embeddings; refuse
   answers with the policy's refusal text without running the model (or, with ``refuse_with="hint"``,
   generates with a refusal hint); block raises :class:`~psaguard.errors.GuardBlocked`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from psaguard.backbones import VisionFeatures
from psaguard.conversation import Conversation, PromptInput, judged_text, to_conversation, with_hint
from psaguard.errors import ConfigError, GuardBlocked, InvalidImageError, InvalidInputError, InvalidPromptError
from psaguard.images import ImageInput
from psaguard.injection import LlmInputs, build_llm_inputs, tokenize_prompt
from psaguard.policy import check_template
from psaguard.verdict import Action, SafetyVerdict

if TYPE_CHECKING:
    from psaguard.guard import SafetyGuard
    from psaguard.streaming import GuardedStream

__all__ = [
    "ACTION_SEVERITY",
    "GenerationOptions",
    "GuardedGeneration",
    "GuardedGenerator",
    "ImagesInput",
    "PreparedBatch",
    "RequestPlan",
    "Resolution",
    "check_generate_kwargs",
    "eos_token_ids",
    "pad_token_id",
    "resolve_action",
    "tokenizer_of",
    "until_eos",
    "worst_verdict",
]

logger = logging.getLogger(__name__)

ImagesInput = Union[ImageInput, Sequence[ImageInput]]
"""One image, or the images of one request in the order of its image parts."""

ACTION_SEVERITY: dict[str, int] = {"allow": 0, "hint": 1, "refuse": 2, "block": 3}
"""How strongly each action intervenes; the most severe verdict of a request's images decides."""

# Set by the guard itself; a caller passing them would bypass the one vision pass or the injection.
_RESERVED_KWARGS = frozenset(
    {"input_ids", "attention_mask", "pixel_values", "inputs_embeds", "mm_encoder_outputs", "image_sizes"}
)


class GenerationOptions(BaseModel):
    """How guarded generation words hints and refusals."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hint_template: str = Field(
        "\nSafe Hint: {hint}",
        description="Appended to the last turn's text for 'hint' actions; '{hint}' is the verdict's hint "
        "(the paper's 'Safe Hint:' line).",
    )
    refuse_with: Literal["text", "hint"] = Field(
        "text",
        description="'text' answers 'refuse' verdicts with the policy's refusal text without running the "
        "model; 'hint' runs the model with `refusal_hint` as the safety hint.",
    )
    refusal_hint: str = Field(
        "You must refuse and say: {refusal}",
        description="Hint used for 'refuse' verdicts when refuse_with='hint'; '{refusal}' is the refusal text.",
    )

    @field_validator("hint_template", "refusal_hint")
    @classmethod
    def _one_field(cls, template: str, info: Any) -> str:
        return check_template(template, "hint" if info.field_name == "hint_template" else "refusal")


class GuardedGeneration(BaseModel):
    """The answer to one guarded request, with the verdict that shaped it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = Field(description="The answer: generated text, or the refusal text when the model did not run.")
    verdict: SafetyVerdict = Field(description="The deciding verdict: the most severe of `verdicts`.")
    verdicts: list[SafetyVerdict] = Field(description="One verdict per image of the request, in order.")
    action: Action = Field(description="What the guard did: 'allow', 'hint', 'refuse' or 'block'.")
    hint: str | None = Field(None, description="The safety hint inserted into the prompt, if any.")
    generated: bool = Field(description="True when the language model ran.")
    prompt_tokens: int = Field(
        0, ge=0, description="Language-model input positions (text, image and safety tokens); 0 if it did not run."
    )
    completion_tokens: int = Field(0, ge=0, description="Generated tokens, up to and including the first EOS.")
    latency_ms: float = Field(0.0, ge=0, description="Wall time of the whole guarded call, in ms.")


def worst_verdict(verdicts: Sequence[SafetyVerdict]) -> SafetyVerdict:
    """The verdict that decides a multi-image request: most severe action, then highest level; first on ties."""
    if not verdicts:
        raise ValueError("no verdicts to choose from")
    return max(verdicts, key=lambda v: (ACTION_SEVERITY[v.action], v.level.id))


@dataclass(frozen=True)
class Resolution:
    """How one deciding verdict is answered: with or without the model, and with which hint."""

    runs_model: bool
    hint: str | None
    text: str  # the answer when the model does not run


def resolve_action(verdict: SafetyVerdict, options: GenerationOptions, *, can_generate: bool = True) -> Resolution:
    """Map a deciding verdict's action to what generation does (block is raised by the caller)."""
    refusal = verdict.refusal or ""
    if verdict.action == "allow":
        return Resolution(runs_model=True, hint=None, text="")
    if verdict.action == "hint":
        return Resolution(runs_model=True, hint=verdict.hint, text="")
    if verdict.action == "refuse" and options.refuse_with == "hint" and can_generate:
        return Resolution(runs_model=True, hint=options.refusal_hint.format(refusal=refusal), text="")
    return Resolution(runs_model=False, hint=None, text="" if verdict.action == "block" else refusal)


@dataclass(frozen=True)
class RequestPlan:
    """What the guard decided to do with one request before any text is generated."""

    verdicts: list[SafetyVerdict]
    verdict: SafetyVerdict
    action: Action
    hint: str | None
    conversation: Conversation | None  # None: the model does not run
    text: str  # the answer when the model does not run
    feature_rows: list[int]  # this request's rows in the analysis' vision features


@dataclass(frozen=True)
class PreparedBatch:
    """Plans of a batch plus the language-model input of those that generate."""

    plans: list[RequestPlan]
    llm_requests: list[int]
    inputs: LlmInputs | None


class GuardedGenerator:
    """Runs guarded generation for one guard (see the module docstring). Stateless between calls."""

    def __init__(self, guard: SafetyGuard, options: GenerationOptions | None = None) -> None:
        guard.backbone.check_can_generate()  # a classifier-only guard fails here, before judging anything
        self.guard = guard
        self.options = options or GenerationOptions()

    # ------------------------------------------------------------------ public entry points
    def generate(self, image: ImagesInput, prompt: PromptInput, **generate_kwargs: Any) -> GuardedGeneration:
        """Judge one request and answer it per the policy; raises GuardBlocked for 'block'."""
        return self.generate_batch([image], [prompt], **generate_kwargs)[0]

    def generate_batch(
        self,
        images: Sequence[ImagesInput],
        prompts: Sequence[PromptInput],
        *,
        return_blocked: bool = False,
        **generate_kwargs: Any,
    ) -> list[GuardedGeneration]:
        """Judge a batch in one vision pass and answer the requests that may be answered in one generate call.

        A blocked request raises :class:`GuardBlocked` before anything is generated, unless
        ``return_blocked`` is True: then it comes back with action 'block', empty text and no generation.
        """
        start = time.perf_counter()
        check_generate_kwargs(generate_kwargs)
        prepared = self.prepare(images, prompts, return_blocked=return_blocked)
        sequences = None
        if prepared.inputs is not None:
            with torch.inference_mode():
                sequences = self.guard.model.generate(**prepared.inputs.model_kwargs(), **generate_kwargs)
        return self.finish(prepared, sequences, start, generate_kwargs)

    def stream(self, image: ImagesInput, prompt: PromptInput, **generate_kwargs: Any) -> GuardedStream:
        """Judge one request now; the returned stream yields answer chunks (see :class:`GuardedStream`)."""
        from psaguard.streaming import GuardedStream

        start = time.perf_counter()
        check_generate_kwargs(generate_kwargs)
        if "streamer" in generate_kwargs:
            raise InvalidInputError("stream() brings its own streamer; use generate(..., streamer=...) for yours")
        prepared = self.prepare([image], [prompt], return_blocked=False)
        return GuardedStream(self, prepared, start, generate_kwargs)

    # ------------------------------------------------------------------ the two halves of a call
    def prepare(
        self,
        images: Sequence[ImagesInput],
        prompts: Sequence[PromptInput],
        *,
        return_blocked: bool,
    ) -> PreparedBatch:
        """Judge the batch and build the language-model input; nothing is generated yet."""
        if isinstance(prompts, str) or isinstance(images, (str, bytes)):
            raise InvalidInputError("generate_batch takes sequences of requests; use generate for one")
        if len(images) != len(prompts):
            raise InvalidInputError(f"got {len(images)} image entries but {len(prompts)} prompts")
        request_images = [_as_image_list(entry) for entry in images]
        conversations = [to_conversation(p, len(imgs)) for p, imgs in zip(prompts, request_images)]
        flat_images = [image for imgs in request_images for image in imgs]
        flat_prompts = [judged_text(conv) for conv, imgs in zip(conversations, request_images) for _ in imgs]
        analysis = self.guard.analyze(flat_images, flat_prompts)
        judged_row = {flat: row for row, flat in enumerate(analysis.judged)}
        plans, offset = [], 0
        for index, (conversation, imgs) in enumerate(zip(conversations, request_images)):
            flat_ids = list(range(offset, offset + len(imgs)))
            offset += len(imgs)
            verdicts = [analysis.verdicts[i] for i in flat_ids]
            rows = [judged_row[i] for i in flat_ids if i in judged_row]
            plan = self._plan(index, conversation, verdicts, rows if len(rows) == len(flat_ids) else None)
            logger.debug("request %d: %s by rule %s", index, plan.action, plan.verdict.rule)
            if plan.action == "block" and not return_blocked:
                raise GuardBlocked(plan.verdict, _blocked_message(index, len(images), plan.verdict))
            plans.append(plan)
        llm_requests = [i for i, plan in enumerate(plans) if plan.conversation is not None]
        inputs = self._llm_inputs([plans[i] for i in llm_requests], analysis.features) if llm_requests else None
        return PreparedBatch(plans=plans, llm_requests=llm_requests, inputs=inputs)

    def finish(
        self,
        prepared: PreparedBatch,
        sequences: torch.Tensor | None,
        start: float,
        generate_kwargs: Mapping[str, Any],
    ) -> list[GuardedGeneration]:
        """Turn generated sequences (None when nothing ran) into one result per request."""
        tokenizer = tokenizer_of(self.guard.processor)
        eos_ids = eos_token_ids(self.guard.model, generate_kwargs)
        answers: dict[int, tuple[str, int, int]] = {}
        if prepared.inputs is not None and sequences is not None:
            width = prepared.inputs.input_ids.shape[1]
            for row, request in enumerate(prepared.llm_requests):
                new = until_eos(sequences[row, width:].tolist(), eos_ids)
                text = tokenizer.decode(new, skip_special_tokens=True)
                answers[request] = (text, prepared.inputs.prompt_lengths[row], len(new))
        latency_ms = (time.perf_counter() - start) * 1000.0
        results = []
        for index, plan in enumerate(prepared.plans):
            text, prompt_tokens, completion_tokens = answers.get(index, (plan.text, 0, 0))
            results.append(
                GuardedGeneration(
                    text=text,
                    verdict=plan.verdict,
                    verdicts=plan.verdicts,
                    action=plan.action,
                    hint=plan.hint,
                    generated=index in answers,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    latency_ms=latency_ms,
                )
            )
        return results

    # ------------------------------------------------------------------ helpers
    def _plan(
        self,
        index: int,
        conversation: Conversation,
        verdicts: list[SafetyVerdict],
        feature_rows: list[int] | None,
    ) -> RequestPlan:
        verdict = worst_verdict(verdicts)
        resolution = resolve_action(verdict, self.options, can_generate=feature_rows is not None)
        if resolution.runs_model and feature_rows is None:
            # Only reachable with on_error='allow': the image could not be read, so the model cannot see it.
            reason = next((v.error for v in verdicts if v.error), "an image could not be judged")
            raise InvalidImageError(f"request {index}: cannot generate without its image: {reason}")
        if resolution.hint is not None:
            conversation = with_hint(conversation, self.options.hint_template.format(hint=resolution.hint))
        return RequestPlan(
            verdicts=verdicts,
            verdict=verdict,
            action=verdict.action,
            hint=resolution.hint,
            conversation=conversation if resolution.runs_model else None,
            text=resolution.text,
            feature_rows=feature_rows or [],
        )

    def _llm_inputs(self, plans: list[RequestPlan], features: VisionFeatures | None) -> LlmInputs:
        guard = self.guard
        if features is None:  # unreachable: a plan that runs the model has all its images judged
            raise InvalidImageError("no image features to generate from")
        tokenizer = tokenizer_of(guard.processor)
        image_token_id = guard.backbone.image_token_id
        rows = [
            _prompt_ids(guard.processor, plan.conversation, image_token_id, len(plan.feature_rows))
            for plan in plans
            if plan.conversation is not None
        ]
        feature_rows = [row for plan in plans for row in plan.feature_rows]
        subset = features.subset(feature_rows)
        with torch.inference_mode():
            image_embeds = list(guard.backbone.project(subset))
        llm_tokens = guard.modules.llm_tokens.detach() if guard.config.tokens.inject_llm_tokens else None
        return build_llm_inputs(
            rows,
            image_embeds,
            image_token_id=image_token_id,
            pad_token_id=pad_token_id(tokenizer, guard.model),
            llm_tokens=llm_tokens,
            device=guard.backbone.device,
        )


def _as_image_list(entry: ImagesInput) -> list[ImageInput]:
    """A request's images: one image, or a list/tuple of them (arrays and bytes are single images)."""
    images = list(entry) if isinstance(entry, (list, tuple)) else [entry]
    if not images:
        raise InvalidInputError("a request needs at least one image")
    return images


def _render(processor: Any, conversation: Conversation) -> str:
    # jinja2 is an optional dependency of transformers, needed (and asked for by transformers) only here.
    from jinja2 import TemplateError

    try:
        return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    except (ValueError, TemplateError) as err:  # ValueError: the processor has no chat template
        raise ConfigError(f"cannot render the conversation with the processor's chat template: {err}") from err


def _prompt_ids(processor: Any, conversation: Conversation, image_token_id: int, num_images: int) -> list[int]:
    """Token ids of the chat-templated conversation, where only the template writes control tokens.

    Tokenizing the rendered text would turn '</s> assistant :' typed by a user into a real end of turn and
    let them forge an assistant turn; transformers' ``sanitize_control_tokens`` encodes such spellings in
    message text as plain text. The plain tokenization still runs first: it refuses a spelled image
    placeholder, and its BOS rule (tokenizers add BOS to text, the chat path does not) is kept.
    """
    tokenizer = tokenizer_of(processor)
    plain = tokenize_prompt(tokenizer, _render(processor, conversation), image_token_id, num_images)
    try:
        ids = list(
            tokenizer.apply_chat_template(
                conversation,
                chat_template=getattr(processor, "chat_template", None),
                add_generation_prompt=True,
                tokenize=True,
                sanitize_control_tokens=True,
                return_dict=False,
            )
        )
    except ValueError as err:
        if "Can't sanitize" in str(err):  # the text spells a control token (e.g. '<unk>') only it can produce
            raise InvalidPromptError(f"the prompt cannot be encoded as plain text: {err}") from err
        raise ConfigError(f"cannot render the conversation with the chat template: {err}") from err
    if plain[:1] == [tokenizer.bos_token_id] and ids[:1] != plain[:1]:
        ids.insert(0, tokenizer.bos_token_id)
    if ids.count(image_token_id) != num_images:
        raise InvalidPromptError(f"the prompt holds {ids.count(image_token_id)} image slots for {num_images} images")
    return ids


def check_generate_kwargs(kwargs: Mapping[str, Any]) -> None:
    """Refuse ``generate`` arguments the guard sets itself or whose output it cannot represent."""
    if reserved := sorted(_RESERVED_KWARGS & set(kwargs)):
        raise InvalidInputError(f"{reserved} are set by the guard; pass images and prompts instead")
    if kwargs.get("num_return_sequences", 1) != 1:
        raise InvalidInputError("guarded generation returns one answer per request (num_return_sequences=1)")
    if kwargs.get("return_dict_in_generate"):
        raise InvalidInputError("guarded generation returns GuardedGeneration objects; drop return_dict_in_generate")


def _blocked_message(index: int, batch_size: int, verdict: SafetyVerdict) -> str:
    where = f"request {index} " if batch_size > 1 else "request "
    return f"{where}blocked by psaguard policy (rule {verdict.rule!r})"


def tokenizer_of(processor: Any) -> Any:
    """The text tokenizer of a processor (or the tokenizer itself)."""
    return getattr(processor, "tokenizer", processor)


def pad_token_id(tokenizer: Any, model: Any) -> int:
    """Id used to pad prompts and answers."""
    for candidate in (tokenizer.pad_token_id, model.generation_config.pad_token_id, tokenizer.eos_token_id):
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
