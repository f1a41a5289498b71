"""Helpers shared by the guarded-generation tests: forcing verdicts, counting calls, plain references."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from transformers import Cache

from psaguard import GuardPolicy, SafetyGuard, SafetyGuardConfig, TokensConfig
from psaguard.backbones import resolve_backbone
from psaguard.images.budget import DEFAULT_MAX_VISION_PATCHES
from psaguard.responses.policy import decide_response
from psaguard.verdict import ResponseVerdict

QUESTION = "what is in this image ?"


def guard_for(
    model: Any,
    processor: Any,
    *,
    inject: bool = True,
    level: int = 0,
    type_code: str = "privacy",
    max_vision_patches: int = DEFAULT_MAX_VISION_PATCHES,
    **policy,
):
    """A fresh guard whose head always predicts ``(level, type_code)``, deciding with ``GuardPolicy(**policy)``."""
    torch.manual_seed(0)
    config = SafetyGuardConfig(
        tokens=TokensConfig(inject_llm_tokens=inject),
        policy=GuardPolicy(**policy),
        max_vision_patches=max_vision_patches,
    )
    guard = SafetyGuard.attach(model, processor, config)
    head = guard.modules.head
    type_id = guard.config.taxonomy.type_by_code(type_code).id
    with torch.no_grad():  # biases far larger than the random weights' logits pin the verdict
        head.level_head.bias.fill_(-40.0)
        head.level_head.bias[level] = 40.0
        head.type_head.bias.fill_(-40.0)
        head.type_head.bias[type_id] = 40.0
    return guard


@contextmanager
def count_calls(module: torch.nn.Module) -> Iterator[list[int]]:
    """Count forward calls of ``module`` inside the block."""
    calls: list[int] = []
    handle = module.register_forward_hook(lambda *args: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


@contextmanager
def capture_llm_inputs(model: Any) -> Iterator[list[dict[str, torch.Tensor]]]:
    """Record each generate call's prefill: the multimodal model's input_ids and the language model's inputs_embeds.

    Observed with forward pre-hooks on public modules, not through a keyword name: transformers renames
    private arguments between minor releases (5.24 passes the cache as ``cache=`` instead of
    ``past_key_values=``). A prefill is the language-model call that no cache of earlier positions precedes,
    whatever keyword carries the cache.
    """
    seen: list[dict[str, torch.Tensor]] = []
    last_ids: list[torch.Tensor] = []

    def on_multimodal(module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)  # LLaVA-NeXT passes it positionally
        if input_ids is not None:
            last_ids[:] = [input_ids]

    def on_lm(module, args, kwargs):
        caches = [value for value in kwargs.values() if isinstance(value, Cache)]
        if last_ids and all(cache.get_seq_length() == 0 for cache in caches):
            seen.append({"input_ids": last_ids[0].clone(), "inputs_embeds": kwargs["inputs_embeds"].detach().clone()})

    handles = [
        model.model.register_forward_pre_hook(on_multimodal, with_kwargs=True),
        getattr(model.model, resolve_backbone(model).language_model_name).register_forward_pre_hook(
            on_lm, with_kwargs=True
        ),
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def spy_generate(model: Any) -> Iterator[list[torch.Tensor]]:
    """Record what ``model.generate`` returns (guarded results carry text; tests compare token ids)."""
    outputs: list[torch.Tensor] = []
    original = model.generate

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        outputs.append(out)
        return out

    model.generate = spy
    try:
        yield outputs
    finally:
        del model.generate  # back to the class method


def plain_generate(model: Any, processor: Any, images: list, conversation: list, **kwargs) -> list[int]:
    """New token ids of the unguarded model on the same chat prompt (the reference)."""
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    try:  # the images of this one prompt, nested: a processor may read a flat list as one sample per image
        inputs = processor(images=[list(images)], text=[text], return_tensors="pt")
    except ValueError:  # a processor that takes a flat list only
        inputs = processor(images=images, text=text, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, **kwargs)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def user_turn(text: str, num_images: int = 1) -> dict:
    return {
        "role": "user",
        "content": [*({"type": "image"} for _ in range(num_images)), {"type": "text", "text": text}],
    }


def flagged_as_privacy(
    classifier: Any, verdicts: Sequence[ResponseVerdict], block: bool = False
) -> list[ResponseVerdict]:
    """``verdicts`` as the guard's response policy decides a certain level-3 privacy answer (with ``block``, a
    policy that blocks level 3), each keeping its request's verdict."""
    taxonomy = classifier.config.taxonomy
    types = [0.0] * taxonomy.num_types
    types[taxonomy.type_by_code("privacy").id] = 1.0
    policy = classifier.policy.response
    if block:
        policy = policy.model_copy(update={"level_actions": {3: "block"}})
    return [decide_response([0.0, 0.0, 0.0, 1.0], types, policy, taxonomy, request=v.request) for v in verdicts]


def flag_judgements(guard: SafetyGuard, flags: Callable[[int, str], bool]) -> list[str]:
    """Make the guard's response judgements flag (privacy, level 3) the answers ``flags(call, text)`` picks, the
    calls counted from 1; the real judgement runs too. Returns the answers judged, in order (``del
    guard.classifier.responses.judge_responses`` undoes the patch)."""
    classifier = guard.classifier
    original = classifier.responses.judge_responses
    judged: list[str] = []

    def judge(context, responses, start, rows=None, tokens_judged=None):
        verdicts = original(context, responses, start, rows, tokens_judged)
        judged.append(responses[0])
        return flagged_as_privacy(classifier, verdicts) if flags(len(judged), responses[0]) else verdicts

    classifier.responses.judge_responses = judge
    return judged
