"""Proxy mode: a classifier-only guard judges each chat request, then refuses, blocks, hints or forwards it.

'allow' forwards the request body unchanged; 'hint' forwards it with the hint appended to the last user turn
(as guarded generation does); 'refuse' answers with a normal completion carrying the refusal (finish_reason
'content_filter') without calling upstream; 'block' answers 400 with the verdict. The upstream's answer comes
back with its status; a stream comes back event by event, the first event carrying the verdict.

With ``check_answers`` (the default) the upstream's answer to a request with images is judged with the request's
images and judged prompt before any of it reaches the client, by the guard's
:class:`~psaguard.generation.monitor.AnswerMonitor` (one per request: the images go through the vision tower once,
at the first judgement; each judgement after it runs only the incremental response head), in a worker thread off the
event loop. A whole answer is judged before it is sent; a stream goes through a
:class:`~psaguard.generation.release_gate.ReleaseGate`, the rule the LangChain adapters and the guard's own
generation monitor share: judged every ``policy.response.interval`` tokens of the guard's tokenizer, each event
released once all the answer's text up to its end lies at least ``policy.response.window`` tokens behind the last
position judged safe, and the whole answer judged before its tail. A flagged answer is replaced by the response
policy's replacement with ``finish_reason: "content_filter"`` ('block': a 400 unstreamed; streamed, the stream ends
with ``content_filter`` and no replacement); the answer's verdict is under ``psaguard_response``."""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, Response, StreamingResponse

from psaguard.conversation import judged_text, to_conversation, with_hint
from psaguard.errors import GuardBlocked, ResponseBlocked
from psaguard.generation.monitor import AnswerMonitor
from psaguard.policy import GenerationOptions
from psaguard.request import GuardRequest
from psaguard.responses.policy import worst_response
from psaguard.serving.admission import Ticket
from psaguard.serving.completions import (
    REFUSAL_FINISH_REASON,
    chat_prompt,
    completion,
    refusal_events,
)
from psaguard.serving.judging import Judge
from psaguard.serving.protocol import ApiError, ChatRequest, api_error_from, verdict_headers
from psaguard.serving.proxy_stream import AnswerJudging, HeldStream, tagged_events
from psaguard.verdict import SafetyVerdict

__all__ = ["DROPPED_MESSAGE_FIELDS", "FORWARDED_FIELDS", "FORWARDED_MESSAGE_FIELDS", "ProxyChat", "forwarded_body"]

logger = logging.getLogger(__name__)

FORWARDED_FIELDS = frozenset(
    {
        # OpenAI's chat-completion parameters that do not change how the conversation is rendered
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "messages",
        "metadata",
        "model",
        "n",
        "parallel_tool_calls",
        "presence_penalty",
        "reasoning_effort",
        "response_format",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        # sampling extras of vLLM / SGLang / TGI: how tokens are drawn, not what the model reads
        "min_p",
        "repetition_penalty",
        "top_k",
    }
)
"""Top-level chat request fields proxy mode forwards; a request with any other field (``chat_template``,
``add_generation_prompt``, ``continue_final_message``, ``echo``, ``documents``, guided decoding, ...) is refused
with a 400, since the guard would not have judged what the upstream then renders."""

FORWARDED_MESSAGE_FIELDS = frozenset({"content", "function_call", "role", "tool_call_id", "tool_calls"})
"""Message fields proxy mode forwards."""

DROPPED_MESSAGE_FIELDS = frozenset({"name"})
"""Message fields proxy mode drops (chat templates may render a name as text the guard does not judge); any
other message field (e.g. Ollama-style ``images``, which the guard would never see) is refused with a 400."""


def forwarded_body(raw: dict[str, Any]) -> dict[str, Any]:
    """What proxy mode sends upstream for ``raw``: allow-listed fields only, messages without dropped fields;
    a 400 for a field it would neither forward nor drop, or a last turn without content (nothing to hint)."""
    refused = sorted(set(raw) - FORWARDED_FIELDS)
    if refused:
        raise ApiError(
            400,
            f"proxy mode does not forward {', '.join(refused)[:200]} (see docs/serving.md for the fields it forwards)",
            code="unsupported_parameter",
            param=refused[0][:100],
        )
    messages = []
    for index, message in enumerate(raw["messages"]):
        refused = sorted(set(message) - FORWARDED_MESSAGE_FIELDS - DROPPED_MESSAGE_FIELDS)
        if refused:
            raise ApiError(
                400,
                f"proxy mode does not forward the message field(s) {', '.join(refused)[:200]}",
                code="unsupported_parameter",
                param=f"messages[{index}].{refused[0][:100]}",
            )
        messages.append({key: value for key, value in message.items() if key not in DROPPED_MESSAGE_FIELDS})
    if messages[-1].get("content") is None:
        raise ApiError(
            400,
            "the last message has no content (the guard's hint, if any, goes there)",
            param=f"messages[{len(messages) - 1}].content",
        )
    return {**raw, "messages": messages}


class ProxyChat:
    """Judges chat requests and forwards the admitted ones to ``config.upstream`` with ``client``."""

    def __init__(self, judge: Judge, client: httpx.AsyncClient, options: GenerationOptions | None = None) -> None:
        if not judge.config.upstream:
            raise ValueError("proxy mode needs an upstream URL")
        self.judge = judge
        self.client = client
        self.options = options or GenerationOptions()
        self.url = judge.config.upstream.rstrip("/") + "/chat/completions"
        key = judge.config.upstream_api_key
        self.headers = {"authorization": f"Bearer {key}"} if key else {}

    async def complete(self, request: ChatRequest, raw: dict[str, Any], ticket: Ticket) -> Response:
        """Judge ``request``; answer the refusal or the block here, forward the rest (hinted if so decided)."""
        forwarded = forwarded_body(raw)
        prompt = chat_prompt(request, self.judge.config.limits)
        # The same checks as guarded generation in local mode: roles, a user turn, no trailing assistant turn
        # (a prefill the upstream would continue after the hint), as many image parts as images.
        to_conversation(prompt.conversation, len(prompt.images))
        judged = judged_text(prompt.conversation)
        verdict, images = await self.judge.judge_keeping(prompt.images, judged, "messages.image_url", ticket)
        # Judged: the images leave the in-flight budget while the upstream answers (kept, uncharged, by the answer's
        # monitor, which encodes them once at its first judgement and keeps their features to the answer's end).
        ticket.refund()
        model = request.model or self.judge.config.model_name
        if verdict.action == "block":
            raise api_error_from(GuardBlocked(verdict))
        if verdict.action == "refuse":
            return _refusal(verdict, model, stream=request.stream)
        checks = bool(images) and self.judge.require_answer_checks()  # fail closed before the upstream answers
        body = forwarded
        if verdict.action == "hint" and verdict.hint:
            body["messages"] = with_hint(body["messages"], self.options.hint_template.format(hint=verdict.hint))
        monitor = self.judge.guard.answer_monitor(GuardRequest(images=tuple(images), prompt=judged)) if checks else None
        if request.stream:
            return await self._forward_stream(body, verdict, monitor, model)
        return await self._forward(body, verdict, monitor)

    async def _forward(self, body: dict[str, Any], verdict: SafetyVerdict, monitor: AnswerMonitor | None) -> Response:
        start = time.perf_counter()
        try:
            response = await self.client.post(self.url, json=body, headers=self.headers)
        except httpx.HTTPError as err:
            raise _unreachable(err, verdict) from err
        finally:
            self.judge.metrics.observe("upstream", time.perf_counter() - start)
        headers = verdict_headers(verdict)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.is_success and monitor is not None and not isinstance(answer, dict):
            raise _unreadable(verdict)  # an answer the guard cannot read is not passed on
        if answer is None:
            return Response(response.content, status_code=response.status_code, headers=headers)
        if isinstance(answer, dict) and response.is_success:
            answer["psaguard"] = verdict.model_dump(mode="json")
            if monitor is not None:
                await _judge_completion(answer, AnswerJudging(monitor, self.judge.metrics))
        return JSONResponse(answer, status_code=response.status_code, headers=headers)

    async def _forward_stream(
        self, body: dict[str, Any], verdict: SafetyVerdict, monitor: AnswerMonitor | None, model: str
    ) -> Response:
        start = time.perf_counter()
        request = self.client.build_request("POST", self.url, json=body, headers=self.headers)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as err:
            raise _unreachable(err, verdict) from err
        headers = verdict_headers(verdict)
        if not response.is_success:
            content = await response.aread()
            await response.aclose()
            return Response(content, status_code=response.status_code, headers=headers, media_type="application/json")
        self.judge.metrics.observe("upstream", time.perf_counter() - start)  # time to the upstream's first byte
        max_line = self.judge.config.limits.max_sse_line_bytes
        if monitor is None:
            events = tagged_events(response, verdict, max_line)
        else:
            held = HeldStream(verdict, AnswerJudging(monitor, self.judge.metrics), model)
            events = held.events(response, max_line)
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers=headers,
            background=BackgroundTask(response.aclose),
        )


async def _judge_completion(answer: dict[str, Any], judging: AnswerJudging) -> None:
    """Judge each choice's message text of an upstream completion (in place; each whole, by the request's one
    monitor): a flagged one is replaced by the replacement with ``finish_reason: "content_filter"``, a blocked
    one raises :class:`ResponseBlocked`; the deciding verdict goes under ``psaguard_response``."""
    choices = answer.get("choices")
    verdicts = []
    for choice in choices if isinstance(choices, list) else []:
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            continue  # tool calls only: no answer text to judge
        verdict = await judging.judge(content)
        verdicts.append(verdict)
        if verdict.action == "block":
            raise ResponseBlocked(verdict, "the upstream's answer was blocked by psaguard response policy")
        if verdict.flagged:
            choice["message"] = {"role": "assistant", "content": verdict.replacement or ""}
            choice["finish_reason"] = REFUSAL_FINISH_REASON
    if verdicts:
        answer["psaguard_response"] = worst_response(verdicts).model_dump(mode="json")


def _refusal(verdict: SafetyVerdict, model: str, *, stream: bool) -> Response:
    """The refusal answered here, without calling the upstream: a completion, or its events when ``stream``."""
    headers = verdict_headers(verdict)
    text = verdict.refusal or ""
    if stream:
        return StreamingResponse(refusal_events(model, text, verdict), media_type="text/event-stream", headers=headers)
    return JSONResponse(
        completion(text=text, model=model, finish_reason=REFUSAL_FINISH_REASON, verdict=verdict),
        headers=headers,
    )


def _unreadable(verdict: SafetyVerdict) -> ApiError:
    return ApiError(
        502,
        "the upstream's answer is not a chat completion the guard can judge",
        type="server_error",
        code="upstream_unreadable",
        headers=verdict_headers(verdict),
    )


def _unreachable(err: httpx.HTTPError, verdict: SafetyVerdict) -> ApiError:
    logger.warning("upstream call failed: %s: %s", type(err).__name__, err)
    return ApiError(
        502,
        f"the upstream model did not answer: {type(err).__name__}",
        type="server_error",
        code="upstream_unavailable",
        headers=verdict_headers(verdict),
    )
