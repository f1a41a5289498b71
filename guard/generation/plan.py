"""The generation plan: what a batch of judged requests will do, and the language-model input of those that run.

Text generation, streaming and the drop-in wrapper all answer judged requests through this module; they
differ only in where their prompt rows come from (a rendered conversation, or the app's own ``input_ids``).

1. :func:`plan_request` turns a request's verdicts into a :class:`RequestPlan`: the deciding verdict
   (:func:`~psaguard.policy.worst_verdict`), what it means for generation
   (:func:`~psaguard.policy.resolve_action`), or :class:`~psaguard.errors.GuardBlocked`;
2. the caller adds each answering request's prompt ids (hint included, one placeholder per image);
3. :class:`GenerationPlan` builds one padded language-model input from the guard's one vision pass
   (:func:`~psaguard.injection.build_llm_inputs`) and turns the generated sequences into
   :class:`GuardedGeneration` results.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import StoppingCriteriaList

from psaguard.backbones import VisionFeatures
from psaguard.classifier import Classifier
from psaguard.errors import GuardBlocked, InvalidImageError, ResponseBlocked
from psaguard.generation.monitor import AnswerState, ReleaseCallback, ResponseMonitor
from psaguard.injection import LlmInputs, build_llm_inputs
from psaguard.policy import GenerationOptions, Resolution, blocked_message, resolve_action, worst_verdict
from psaguard.tokenization import eos_token_ids, pad_token_id, tokenizer_of, until_eos
from psaguard.verdict import Action, ResponseVerdict, SafetyVerdict

__all__ = ["GenerationPlan", "GuardedGeneration", "RequestPlan", "plan_request"]


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
    response_verdict: ResponseVerdict | None = Field(
        None, description="The streaming monitor's last judgement of the answer; None when it did not run."
    )
    stopped: bool = Field(
        False, description="True when the monitor stopped the answer: `text` is the released part plus the replacement."
    )
    stopped_at: int | None = Field(
        None, ge=0, description="Answer tokens judged by the judgement that flagged the answer (stopped answers)."
    )
    released_tokens: int | None = Field(
        None, ge=0, description="Answer tokens whose text was released before the end (monitored answers)."
    )
    latency_ms: float = Field(0.0, ge=0, description="Wall time of the whole guarded call, in ms.")


@dataclass(frozen=True)
class RequestPlan:
    """What the guard decided to do with one request before any text is generated.

    ``images`` are the request's rows in the batch's vision features; ``tokens`` its prompt ids (one image
    placeholder per image, the hint included) once the caller has built them, None while the model does
    not run for it.
    """

    verdicts: list[SafetyVerdict]
    verdict: SafetyVerdict
    resolution: Resolution
    images: list[int]
    tokens: list[int] | None = None
    prompt: str = ""
    """The request's text as the head judged it (the streaming monitor's prompt)."""

    @property
    def action(self) -> Action:
        return self.verdict.action

    @property
    def hint(self) -> str | None:
        return self.resolution.hint

    @property
    def text(self) -> str:
        """The answer when the model does not run (the refusal; empty for a returned block)."""
        return self.resolution.text

    @property
    def runs_model(self) -> bool:
        return self.resolution.runs_model

    def with_tokens(self, tokens: list[int], prompt: str = "") -> RequestPlan:
        return dataclasses.replace(self, tokens=tokens, prompt=prompt)


def plan_request(
    verdicts: list[SafetyVerdict],
    images: list[int] | None,
    options: GenerationOptions,
    *,
    where: str = "request",
    return_blocked: bool = False,
) -> RequestPlan:
    """The plan of one request from its image verdicts; ``images`` is None when an image could not be judged.

    Raises :class:`GuardBlocked` for a blocked request unless ``return_blocked``, and
    :class:`InvalidImageError` when the model would have to run without one of the request's images.
    """
    verdict = worst_verdict(verdicts)
    if verdict.action == "block" and not return_blocked:
        raise GuardBlocked(verdict, blocked_message(verdict, where))
    resolution = resolve_action(verdict, options, can_generate=images is not None)
    if resolution.runs_model and images is None:
        # Only reachable with on_error='allow': the image could not be read, so the model cannot see it.
        reason = next((v.error for v in verdicts if v.error), "an image could not be judged")
        raise InvalidImageError(f"{where}: cannot generate without its image: {reason}")
    return RequestPlan(verdicts=verdicts, verdict=verdict, resolution=resolution, images=images or [])


class GenerationPlan:
    """The plans of a batch and the one language-model input of the requests that generate."""

    def __init__(
        self,
        classifier: Classifier,
        requests: list[RequestPlan],
        features: VisionFeatures | None,
        memory: torch.Tensor | None = None,
    ) -> None:
        """``memory``: the safety heads' memory of ``features`` when the request's judgement kept it (the monitor
        then does not run the safety projector again)."""
        self.classifier = classifier
        self.requests = requests
        self.answering = [i for i, request in enumerate(requests) if request.tokens is not None]
        self.inputs = self._llm_inputs(features) if self.answering else None
        self.monitor: ResponseMonitor | None = None
        """The streaming monitor of the answering requests (after :meth:`generate`), when the policy runs it."""
        self._features = features
        self._memory = memory
        if self.inputs is not None and self.monitors:
            classifier.require_response_head()  # monitor=True on a guard without one: fail before generating

    @property
    def monitors(self) -> bool:
        """Whether the streaming monitor judges the answers (``policy.response.monitors``)."""
        return self.classifier.policy.response.monitors(self.classifier.has_response_head)

    @property
    def model(self) -> torch.nn.Module:
        return self.classifier.model

    @property
    def tokenizer(self) -> Any:
        return tokenizer_of(self.classifier.processor)

    def generate(
        self, generate_kwargs: Mapping[str, Any], on_release: ReleaseCallback | None = None
    ) -> torch.Tensor | None:
        """Run ``model.generate`` once for every answering request (None when none answers).

        With the monitor on, answers are judged while they grow (:class:`~psaguard.generation.monitor.ResponseMonitor`),
        ``on_release`` receives the text as it is released, and the rest is judged before this returns.
        """
        if self.inputs is None:
            return None
        kwargs = dict(generate_kwargs)
        if self.monitors:
            self.monitor = self._monitor(generate_kwargs, on_release)
            kwargs["stopping_criteria"] = StoppingCriteriaList([*(kwargs.get("stopping_criteria") or []), self.monitor])
        with torch.inference_mode():
            sequences = self.model.generate(**self.inputs.model_kwargs(), **kwargs)
        if self.monitor is not None:
            self.monitor.finish(sequences)
        return sequences

    def answers(self, sequences: torch.Tensor | None, generate_kwargs: Mapping[str, Any]) -> dict[int, list[int]]:
        """``{request: generated ids up to and including the first EOS}`` for the requests that ran."""
        if self.inputs is None or sequences is None:
            return {}
        eos_ids = eos_token_ids(self.model, generate_kwargs)
        width = self.inputs.input_ids.shape[1]
        return {
            request: until_eos(sequences[row, width:].tolist(), eos_ids) for row, request in enumerate(self.answering)
        }

    def results(
        self, sequences: torch.Tensor | None, start: float, generate_kwargs: Mapping[str, Any]
    ) -> list[GuardedGeneration]:
        """One result per request; ``sequences`` are ``generate``'s output (None when nothing ran)."""
        answers = self.answers(sequences, generate_kwargs)
        prompt_lengths = {} if self.inputs is None else dict(zip(self.answering, self.inputs.prompt_lengths))
        tokenizer = self.tokenizer
        latency_ms = (time.perf_counter() - start) * 1000.0
        results = []
        monitored = {} if self.monitor is None else dict(zip(self.answering, self.monitor.states))
        for index, request in enumerate(self.requests):
            generated = index in answers
            text = tokenizer.decode(answers[index], skip_special_tokens=True) if generated else request.text
            state = monitored.get(index)
            results.append(
                GuardedGeneration(
                    text=_shown_text(index, text, state),
                    verdict=request.verdict,
                    verdicts=request.verdicts,
                    action=request.action,
                    hint=request.hint,
                    generated=generated,
                    prompt_tokens=prompt_lengths.get(index, 0),
                    completion_tokens=len(answers[index]) if generated else 0,
                    latency_ms=latency_ms,
                    **_monitor_fields(state),
                )
            )
        return results

    def _monitor(self, generate_kwargs: Mapping[str, Any], on_release: ReleaseCallback | None) -> ResponseMonitor:
        """The monitor of the answering requests, on the safety features of the plan's one vision pass."""
        if self._features is None or self.inputs is None:  # unreachable: a plan that runs the model has features
            raise InvalidImageError("no image features to judge the answers with")
        requests = [self.requests[i] for i in self.answering]
        rows = [row for request in requests for row in request.images]
        prompts = [request.prompt for request in requests for _ in request.images]
        memory = None if self._memory is None else self._memory[rows]
        context = self.classifier.responses.request_context(
            self._features.subset(rows), prompts, time.perf_counter(), incremental=True, memory=memory
        )
        image_rows, offset = [], 0
        for request in requests:
            image_rows.append(list(range(offset, offset + len(request.images))))
            offset += len(request.images)
        return ResponseMonitor(
            self.classifier,
            context,
            image_rows,
            self.inputs.input_ids.shape[1],
            eos_token_ids(self.model, generate_kwargs),
            on_release,
        )

    def _llm_inputs(self, features: VisionFeatures | None) -> LlmInputs:
        classifier = self.classifier
        if features is None:  # unreachable: a plan that runs the model has all its images judged
            raise InvalidImageError("no image features to generate from")
        requests = [self.requests[i] for i in self.answering]
        backbone = classifier.backbone
        subset = features.subset([row for request in requests for row in request.images])
        with torch.inference_mode():
            image_embeds = backbone.project(subset)
        inject = classifier.config.tokens.inject_llm_tokens
        return build_llm_inputs(
            [request.tokens or [] for request in requests],
            image_embeds,
            layout=backbone.image_layout(subset, image_embeds),
            pad_token_id=pad_token_id(self.tokenizer, self.model),
            llm_tokens=classifier.modules.llm_tokens.detach() if inject else None,
            device=backbone.device,
        )


def _shown_text(index: int, text: str, state: AnswerState | None) -> str:
    """The answer ``text``, or, for an answer the monitor stopped, its released text and the replacement; a
    blocked answer raises :class:`ResponseBlocked`."""
    if state is None or not state.stopped or state.verdict is None:
        return text
    if state.verdict.action == "block":
        raise ResponseBlocked(state.verdict, f"answer {index} blocked by psaguard response policy")
    return state.text + (state.verdict.replacement or "")


def _monitor_fields(state: AnswerState | None) -> dict[str, Any]:
    """The :class:`GuardedGeneration` fields the answer's monitor state sets (its defaults without a monitor)."""
    if state is None:
        return {"response_verdict": None, "stopped": False, "stopped_at": None, "released_tokens": None}
    return {
        "response_verdict": state.verdict,
        "stopped": bool(state.stopped),
        "stopped_at": state.stopped_at,
        "released_tokens": state.released,
    }
