"""Guarded generation: judge a request, then allow, hint, refuse or block its answer, with one vision pass.

:class:`GuardedGenerator` is what ``SafetyGuard.generate`` / ``generate_batch`` / ``stream`` run:

1. every image of a request is judged with the text of the request's turns (``Classifier.analyze``; one vision
   pass);
2. the worst verdict decides (actions order allow < hint < refuse < block, ties by level; see
   :mod:`psaguard.policy`);
3. allow and hint run the language model on the chat-templated prompt (a hint is appended to the last user
   turn, as the paper's "Safe Hint"), with ``llm_tokens`` placed before each image's embeddings; refuse
   answers with the policy's refusal text without running the model (or, with ``refuse_with="hint"``,
   generates with a refusal hint); block raises :class:`~psaguard.errors.GuardBlocked`.

The plan and the language-model input are :mod:`psaguard.generation.plan`'s, shared with the drop-in wrapper. Names
that lived here before the request path was split (the decisions, now in :mod:`psaguard.policy`; the
tokenizer rules, now in :mod:`psaguard.tokenization`; the plan's types, in :mod:`psaguard.generation.plan`) still import
from here for one release, with a ``DeprecationWarning``.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Union

from psaguard import policy, tokenization
from psaguard.backbones import registered_backbones
from psaguard.classifier import Classifier
from psaguard.conversation import Conversation, PromptInput, with_hint
from psaguard.errors import ConfigError, InvalidInputError, InvalidPromptError
from psaguard.generation.plan import GenerationPlan, GuardedGeneration, RequestPlan, plan_request
from psaguard.generation.streaming import GuardedStream
from psaguard.images.decode import ImageInput
from psaguard.injection import tokenize_prompt
from psaguard.policy import GenerationOptions
from psaguard.request import GuardRequest
from psaguard.tokenization import render_chat, tokenizer_of

__all__ = [
    "GuardedGenerator",
    "ImagesInput",
    "chat_token_ids",
    "check_generate_kwargs",
    "reserved_kwargs",
]

logger = logging.getLogger(__name__)

ImagesInput = Union[ImageInput, Sequence[ImageInput]]
"""One image, or the images of one request in the order of its image parts."""

# Set by the guard itself; a caller passing them would bypass the one vision pass or the injection. The
# family adapters add the image inputs of their processors (reserved_kwargs()).
_RESERVED_KWARGS = frozenset({"input_ids", "attention_mask", "pixel_values", "inputs_embeds", "mm_encoder_outputs"})


class GuardedGenerator:
    """Runs guarded generation for one classifier (see the module docstring). Stateless between calls."""

    def __init__(self, classifier: Classifier, options: GenerationOptions | None = None) -> None:
        classifier.backbone.check_can_generate()  # a classifier-only guard fails here, before judging anything
        self.classifier = classifier
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
        plan = self.prepare(images, prompts, return_blocked=return_blocked)
        return plan.results(plan.generate(generate_kwargs), start, generate_kwargs)

    def stream(self, image: ImagesInput, prompt: PromptInput, **generate_kwargs: Any) -> GuardedStream:
        """Judge one request now; the returned stream yields answer chunks (see :class:`GuardedStream`)."""
        start = time.perf_counter()
        check_generate_kwargs(generate_kwargs)
        if "streamer" in generate_kwargs:
            raise InvalidInputError("stream() brings its own streamer; use generate(..., streamer=...) for yours")
        return GuardedStream(self.prepare([image], [prompt], return_blocked=False), start, generate_kwargs)

    def prepare(
        self,
        images: Sequence[ImagesInput],
        prompts: Sequence[PromptInput],
        *,
        return_blocked: bool,
    ) -> GenerationPlan:
        """Judge the batch and build the language-model input; nothing is generated yet."""
        if isinstance(prompts, str) or isinstance(images, (str, bytes)):
            raise InvalidInputError("generate_batch takes sequences of requests; use generate for one")
        if len(images) != len(prompts):
            raise InvalidInputError(f"got {len(images)} image entries but {len(prompts)} prompts")
        request_images = [_as_image_list(entry) for entry in images]
        batch = [GuardRequest.of(imgs, prompt) for imgs, prompt in zip(request_images, prompts)]
        judgement = self.classifier.judge_requests(batch, on_text_only="block")  # every request has an image
        requests = []
        for index, request in enumerate(batch):
            where = f"request {index}" if len(images) > 1 else "request"
            plan = plan_request(
                judgement.image_verdicts[index],
                judgement.rows[index],
                self.options,
                where=where,
                return_blocked=return_blocked,
            )
            logger.debug("request %d: %s by rule %s", index, plan.action, plan.verdict.rule)
            if plan.runs_model:
                plan = plan.with_tokens(self._prompt_ids(list(request.conversation), plan), request.prompt)
            requests.append(plan)
        return GenerationPlan(self.classifier, requests, judgement.features, judgement.memory)

    def _prompt_ids(self, conversation: Conversation, request: RequestPlan) -> list[int]:
        if request.hint is not None:
            conversation = with_hint(conversation, self.options.hint_text(request.hint))
        backbone = self.classifier.backbone
        return chat_token_ids(
            self.classifier.processor, conversation, backbone.placeholder_token_id, len(request.images)
        )


def _as_image_list(entry: ImagesInput) -> list[ImageInput]:
    """A request's images: one image, or a list/tuple of them (arrays and bytes are single images)."""
    images = list(entry) if isinstance(entry, (list, tuple)) else [entry]
    if not images:
        raise InvalidInputError("a request needs at least one image")
    return images


def chat_token_ids(processor: Any, conversation: Conversation, placeholder_id: int, num_images: int) -> list[int]:
    """Token ids of the chat-templated conversation, where only the template writes control tokens.

    Tokenizing the rendered text would turn '</s> assistant :' typed by a user into a real end of turn and
    let them forge an assistant turn; transformers' ``sanitize_control_tokens`` encodes such spellings in
    message text as plain text. The plain tokenization still runs first: it refuses a spelled image
    placeholder, and its BOS rule (tokenizers add BOS to text, the chat path does not) is kept.
    """
    tokenizer = tokenizer_of(processor)
    plain = tokenize_prompt(tokenizer, render_chat(processor, conversation), placeholder_id, num_images)
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
    if ids.count(placeholder_id) != num_images:
        raise InvalidPromptError(f"the prompt holds {ids.count(placeholder_id)} image slots for {num_images} images")
    return ids


def reserved_kwargs() -> frozenset[str]:
    """``generate`` arguments only the guard sets (ids, masks, pixels, every registered family's image inputs)
    or that it refuses (inputs a family's guard cannot judge, such as videos)."""
    family_inputs = {
        name
        for adapter in registered_backbones()
        for name in (*adapter.image_input_names, *adapter.derived_input_names, *adapter.unjudged_input_names)
    }
    return _RESERVED_KWARGS | family_inputs


def check_generate_kwargs(kwargs: Mapping[str, Any]) -> None:
    """Refuse ``generate`` arguments the guard sets itself or whose output it cannot represent."""
    if reserved := sorted(reserved_kwargs() & set(kwargs)):
        raise InvalidInputError(f"{reserved} are set by the guard; pass images and prompts instead")
    if kwargs.get("num_return_sequences", 1) != 1:
        raise InvalidInputError("guarded generation returns one answer per request (num_return_sequences=1)")
    if kwargs.get("return_dict_in_generate"):
        raise InvalidInputError("guarded generation returns GuardedGeneration objects; drop return_dict_in_generate")


# Names this module re-exported before the request path was split; their homes, for one release.
_MOVED = {
    "ACTION_SEVERITY": policy,
    "Resolution": policy,
    "resolve_action": policy,
    "worst_verdict": policy,
    "eos_token_ids": tokenization,
    "pad_token_id": tokenization,
    "until_eos": tokenization,
}


def __getattr__(name: str) -> Any:
    home = _MOVED.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"psaguard.generation.{name} moved to {home.__name__}.{name}; the old path goes in the next release",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(home, name)
