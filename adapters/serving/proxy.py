"""Proxy mode: a classifier-only guard judges each chat request, then refuses, blocks, hints or forwards it.

'allow' forwards the request body unchanged; 'hint' forwards it with the hint appended to the last user turn
(as guarded generation does); 'refuse' answers with a normal completion carrying the refusal (finish_reason
'content_filter') without calling upstream; 'block' answers 400 with the verdict. The upstream's answer comes
back with its status; a stream comes back event by event, the first event carrying the verdict.

With ``check_answers`` (the default) the upstream's answer to a request with images is judged with the
request's images and judged prompt (:meth:`Judge.judge_response`) before any of it reaches the client: a whole
answer before it is sent; a stream held back and judged every ``policy.response.interval`` content chunks over
the growing text, released only ``policy.response.window`` chunks behind the last judged position, and judged
whole before its tail. A flagged answer is replaced by the response policy's replacement with
``finish_reason: "content_filter"`` ('block': a 400 unstreamed; streamed, the stream ends with
``content_filter`` and no replacement); the answer's verdict is under ``psaguard_response``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, Response, StreamingResponse

from psaguard.conversation import judged_text, to_conversation, with_hint
from psaguard.errors import GuardBlocked, PsaGuardError, ResponseBlocked
from psaguard.policy import GenerationOptions
from psaguard.response_policy import ResponsePolicy, worst_response
from psaguard.serving.admission import Ticket
from psaguard.serving.completions import (
    REFUSAL_FINISH_REASON,
    chat_prompt,
    chunk,
    completion,
    completion_id,
    refusal_events,
    sse,
    sse_done,
)
from psaguard.serving.judging import Judge
from psaguard.serving.protocol import ApiError, ChatRequest, api_error_from, verdict_headers
from psaguard.verdict import ResponseVerdict, SafetyVerdict

AnswerJudge = Callable[[str], Awaitable[ResponseVerdict]]
"""Judges an answer (so far) to the request being proxied."""

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
        # Judged: the images leave the in-flight budget while the upstream answers (kept, uncharged, to judge the
        # answer with them).
        ticket.refund()
        headers = verdict_headers(verdict)
        model = request.model or self.judge.config.model_name
        if verdict.action == "block":
            raise api_error_from(GuardBlocked(verdict))
        if verdict.action == "refuse":
            text = verdict.refusal or ""
            if request.stream:
                return StreamingResponse(
                    refusal_events(model, text, verdict), media_type="text/event-stream", headers=headers
                )
            return JSONResponse(
                completion(text=text, model=model, finish_reason=REFUSAL_FINISH_REASON, verdict=verdict),
                headers=headers,
            )
        checks = bool(images) and self.judge.require_answer_checks()  # fail closed before the upstream answers
        body = forwarded
        if verdict.action == "hint" and verdict.hint:
            body["messages"] = with_hint(body["messages"], self.options.hint_template.format(hint=verdict.hint))
        judge_answer: AnswerJudge | None = partial(self.judge.judge_response, images, judged) if checks else None
        if request.stream:
            return await self._forward_stream(body, verdict, judge_answer, model)
        return await self._forward(body, verdict, judge_answer)

    async def _forward(
        self, body: dict[str, Any], verdict: SafetyVerdict, judge_answer: AnswerJudge | None
    ) -> Response:
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
        if response.is_success and judge_answer is not None and not isinstance(answer, dict):
            raise _unreadable(verdict)  # an answer the guard cannot read is not passed on
        if answer is None:
            return Response(response.content, status_code=response.status_code, headers=headers)
        if isinstance(answer, dict) and response.is_success:
            answer["psaguard"] = verdict.model_dump(mode="json")
            if judge_answer is not None:
                await _judge_completion(answer, judge_answer)
        return JSONResponse(answer, status_code=response.status_code, headers=headers)

    async def _forward_stream(
        self, body: dict[str, Any], verdict: SafetyVerdict, judge_answer: AnswerJudge | None, model: str
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
        if judge_answer is None:
            events = _events(response, verdict, max_line)
        else:
            held = _HeldStream(verdict, judge_answer, self.judge.guard.policy.response, model)
            events = held.events(response, max_line)
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers=headers,
            background=BackgroundTask(response.aclose),
        )


class _LineTooLong(Exception):
    """An upstream event-stream line longer than the server's cap."""


async def _lines(response: httpx.Response, max_bytes: int) -> AsyncIterator[str]:
    """The lines of an event stream (LF or CRLF ends), each at most ``max_bytes`` long (else
    :class:`_LineTooLong`, before more of it is buffered)."""
    pending = b""
    async for data in response.aiter_bytes():
        pending += data
        *complete, pending = pending.split(b"\n")
        for line in complete:
            if len(line) > max_bytes:
                raise _LineTooLong(len(line))
            yield line.removesuffix(b"\r").decode("utf-8", "replace")
        if len(pending) > max_bytes:
            raise _LineTooLong(len(pending))
    if pending:
        yield pending.decode("utf-8", "replace")


async def _upstream_events(response: httpx.Response, max_line_bytes: int) -> AsyncIterator[list[str]]:
    """The upstream's server-sent events (their lines), each as soon as it is complete."""
    lines: list[str] = []
    async for line in _lines(response, max_line_bytes):
        if line:
            lines.append(line)
        elif lines:
            yield lines
            lines = []
    if lines:
        yield lines


def _stream_error(err: Exception, max_line_bytes: int) -> bytes:
    """The error event ending a stream whose upstream broke after the headers (OpenAI's error event shape)."""
    if isinstance(err, _LineTooLong):
        logger.warning("upstream stream line over %d bytes; stream ended", max_line_bytes)
        message = f"upstream stream sent a line longer than {max_line_bytes} bytes"
        error = {"error": {"message": message, "type": "server_error", "code": "upstream_line_too_long"}}
    else:
        logger.warning("upstream stream failed: %s", err)
        error = {"error": {"message": f"upstream stream failed: {type(err).__name__}", "type": "server_error"}}
    return f"data: {json.dumps(error)}\n\n".encode()


def _event_bytes(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n\n").encode()


async def _events(response: httpx.Response, verdict: SafetyVerdict, max_line_bytes: int) -> AsyncIterator[bytes]:
    """The upstream's server-sent events, each as soon as it is complete; the first data event gets the verdict."""
    tagged = False
    try:
        async for lines in _upstream_events(response, max_line_bytes):
            if not tagged:
                lines, tagged = _with_field(lines, "psaguard", verdict)
            yield _event_bytes(lines)
    except (httpx.HTTPError, _LineTooLong) as err:
        yield _stream_error(err, max_line_bytes)


@dataclass
class _Held:
    """An upstream event held back until the answer up to it has been judged."""

    lines: list[str]
    units: int
    """Content chunks of the answer up to and including this event."""


class _HeldStream:
    """An upstream answer stream released only as far as it has been judged (see the module docstring).

    Every ``policy.interval`` content chunks the answer so far is judged; events are released up to
    ``policy.window`` content chunks behind the last position judged safe; when the upstream ends, the whole
    answer is judged before the rest is released. A flagged answer ends the stream: the replacement (for
    'replace'), a last chunk with ``finish_reason: "content_filter"`` and the answer's verdict, ``[DONE]``.
    Nothing past the released events is ever sent.
    """

    def __init__(self, verdict: SafetyVerdict, judge_answer: AnswerJudge, policy: ResponsePolicy, model: str) -> None:
        self.verdict = verdict
        self.judge_answer = judge_answer
        self.policy = policy
        self.model = model
        self.text = ""
        self.units = 0
        self.judged = 0
        self.held: deque[_Held] = deque()
        self.tagged = False
        self.stream_id: str | None = None
        self.last: ResponseVerdict | None = None

    async def events(self, response: httpx.Response, max_line_bytes: int) -> AsyncIterator[bytes]:
        """The released events, then the end (the upstream's, or the filtered one)."""
        try:
            async for lines in _upstream_events(response, max_line_bytes):
                if _is_done(lines):
                    break
                self._hold(lines)
                if self.units - self.judged >= self.policy.interval:
                    if not await self._judge():
                        break
                    for released in self._release(self.judged - self.policy.window):
                        yield released
        except (httpx.HTTPError, _LineTooLong) as err:
            yield _stream_error(err, max_line_bytes)  # unjudged held text is dropped with the stream
            return
        except PsaGuardError as err:  # the guard could not judge the answer: nothing more is released
            yield sse(api_error_from(err).body())
            return
        try:
            flagged = self.last is not None and self.last.flagged
            if not flagged and self.judged < self.units:
                await self._judge()  # the tail is judged before it is released (an answer without text: nothing)
        except PsaGuardError as err:
            yield sse(api_error_from(err).body())
            return
        if self.last is not None and self.last.flagged:
            for event in self._filtered(self.last):
                yield event
            return
        for released in self._release(self.units, final=True):
            yield released
        yield sse_done()

    def _hold(self, lines: list[str]) -> None:
        payload = _payload(lines)
        if payload is None:  # comments, keep-alives, anything but a JSON data event: not passed on unread
            return
        if isinstance(payload.get("id"), str):
            self.stream_id = self.stream_id or payload["id"]
        content = _delta_content(payload)
        if content:
            self.text += content
            self.units += 1
        self.held.append(_Held(lines, self.units))

    async def _judge(self) -> bool:
        """Judge the answer so far; True when it passed."""
        self.last = await self.judge_answer(self.text)
        if self.last.flagged:
            return False
        self.judged = self.units
        return True

    def _release(self, upto: int, final: bool = False) -> list[bytes]:
        """The held events covering at most ``upto`` content chunks (all of them when ``final``); the first
        released data event gets the request's verdict, the last one of a final release the answer's."""
        out: list[list[str]] = []
        while self.held and (final or self.held[0].units <= upto):
            lines = self.held.popleft().lines
            if not self.tagged:
                lines, self.tagged = _with_field(lines, "psaguard", self.verdict)
            out.append(lines)
        if final and out and self.last is not None:
            tagged = False
            for index in range(len(out) - 1, -1, -1):  # the last event with JSON data: usually the finish chunk
                out[index], tagged = _with_field(out[index], "psaguard_response", self.last)
                if tagged:
                    break
        return [_event_bytes(lines) for lines in out]

    def _filtered(self, verdict: ResponseVerdict) -> list[bytes]:
        """The end of a flagged answer: the replacement ('replace'), the filtered finish, [DONE]."""
        self.held.clear()
        stream_id = self.stream_id or completion_id()
        first = not self.tagged  # nothing released yet: this end carries the request's verdict too
        events = []
        if verdict.action == "replace" and verdict.replacement:
            events.append(
                sse(
                    chunk(
                        stream_id,
                        self.model,
                        role="assistant" if first else None,
                        content=verdict.replacement,
                        verdict=self.verdict if first else None,
                    )
                )
            )
            first = False
        events.append(
            sse(
                chunk(
                    stream_id,
                    self.model,
                    finish_reason=REFUSAL_FINISH_REASON,
                    verdict=self.verdict if first else None,
                    response_verdict=verdict,
                )
            )
        )
        events.append(sse_done())
        return events


def _is_done(lines: list[str]) -> bool:
    return any(line.startswith("data:") and line[len("data:") :].strip() == "[DONE]" for line in lines)


def _payload(lines: list[str]) -> dict[str, Any] | None:
    """The JSON object of an event with one data line; None for other events."""
    data = [line for line in lines if line.startswith("data:")]
    if len(data) != 1:
        return None
    try:
        payload = json.loads(data[0][len("data:") :])
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _delta_content(payload: dict[str, Any]) -> str:
    """The answer text of one event: its choices' ``delta.content`` (or ``message.content``, should an upstream
    send a whole completion as an event)."""
    choices = payload.get("choices")
    if not isinstance(choices, list):
        return ""
    texts = []
    for choice in choices:
        for key in ("delta", "message"):
            part = choice.get(key) if isinstance(choice, dict) else None
            content = part.get("content") if isinstance(part, dict) else None
            if isinstance(content, str):
                texts.append(content)
    return "".join(texts)


def _with_field(lines: list[str], key: str, verdict: SafetyVerdict | ResponseVerdict) -> tuple[list[str], bool]:
    """The event with ``key: verdict`` added to its JSON data, and whether it was a JSON data event."""
    payload = _payload(lines)
    if payload is None:
        return lines, False
    payload[key] = verdict.model_dump(mode="json")
    data = next(line for line in lines if line.startswith("data:"))
    tagged = "data: " + json.dumps(payload, separators=(",", ":"))
    return [tagged if line is data else line for line in lines], True


async def _judge_completion(answer: dict[str, Any], judge_answer: AnswerJudge) -> None:
    """Judge each choice's message text of an upstream completion (in place): a flagged one is replaced by the
    replacement with ``finish_reason: "content_filter"``, a blocked one raises :class:`ResponseBlocked`; the
    deciding verdict goes under ``psaguard_response``."""
    choices = answer.get("choices")
    verdicts = []
    for choice in choices if isinstance(choices, list) else []:
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            continue  # tool calls only: no answer text to judge
        verdict = await judge_answer(content)
        verdicts.append(verdict)
        if verdict.action == "block":
            raise ResponseBlocked(verdict, "the upstream's answer was blocked by psaguard response policy")
        if verdict.flagged:
            choice["message"] = {"role": "assistant", "content": verdict.replacement or ""}
            choice["finish_reason"] = REFUSAL_FINISH_REASON
    if verdicts:
        answer["psaguard_response"] = worst_response(verdicts).model_dump(mode="json")


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
