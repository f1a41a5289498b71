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

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import httpx
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, Response, StreamingResponse

from psaguard.conversation import judged_text, to_conversation, with_hint
from psaguard.errors import GuardBlocked, PsaGuardError, ResponseBlocked
from psaguard.generation.monitor import AnswerMonitor
from psaguard.generation.release_gate import ReleaseGate
from psaguard.policy import GenerationOptions
from psaguard.request import GuardRequest
from psaguard.response_policy import worst_response
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
from psaguard.serving.metrics import ServeMetrics
from psaguard.serving.protocol import ApiError, ChatRequest, api_error_from, verdict_headers
from psaguard.verdict import ResponseVerdict, SafetyVerdict

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
                await _judge_completion(answer, _Judging(monitor, self.judge.metrics))
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
            events = _events(response, verdict, max_line)
        else:
            held = _HeldStream(verdict, _Judging(monitor, self.judge.metrics), model)
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


Step = TypeVar("Step")


class _Judging:
    """One answer's monitor, run in a worker thread off the event loop, its judgements timed as the 'response'
    stage and its final verdict counted."""

    def __init__(self, monitor: AnswerMonitor, metrics: ServeMetrics) -> None:
        self.monitor = monitor
        self.metrics = metrics

    async def run(self, step: Callable[..., Step], *args: Any) -> Step:
        """``step(*args)`` (a call that may judge the answer) in a worker thread; its judgements timed."""
        judgements, start = self.monitor.judgements, time.perf_counter()
        try:
            return await asyncio.to_thread(step, *args)
        finally:
            if self.monitor.judgements != judgements:
                self.metrics.observe("response", time.perf_counter() - start)

    async def judge(self, answer: str) -> ResponseVerdict:
        """The verdict of a whole ``answer`` (counted)."""
        verdict = await self.run(self.monitor.judge, answer)
        self.metrics.response_verdict(verdict)
        return verdict

    def count(self) -> None:
        """Count the answer's last verdict (a streamed answer's, once it ended or stopped)."""
        if self.monitor.verdict is not None:
            self.metrics.response_verdict(self.monitor.verdict)


class _HeldStream:
    """An upstream answer stream released only as far as it has been judged (see the module docstring).

    Each event with answer text goes through the answer's :class:`ReleaseGate` (judged when due, released
    when all the text up to it is); events without text (the role chunk, tool-call chunks, the finish chunk)
    wait in the gate for the next release; when the upstream ends, the whole answer is judged before the rest
    is released. A flagged answer ends the stream: the replacement (for 'replace'), a last chunk with
    ``finish_reason: "content_filter"`` and the answer's verdict, ``[DONE]``. Nothing past the released events
    is ever sent; comments and events that are not JSON data are not passed on.
    """

    def __init__(self, verdict: SafetyVerdict, judging: _Judging, model: str) -> None:
        self.verdict = verdict
        self.judging = judging
        self.gate: ReleaseGate[list[str]] = ReleaseGate(judging.monitor)
        self.model = model
        self.tagged = False
        self.stream_id: str | None = None

    async def events(self, response: httpx.Response, max_line_bytes: int) -> AsyncIterator[bytes]:
        """The released events, then the end (the upstream's, or the filtered one)."""
        try:
            async for lines in _upstream_events(response, max_line_bytes):
                if _is_done(lines):
                    break
                payload = _payload(lines)
                if payload is None:  # comments, keep-alives, anything but a JSON data event: not passed on unread
                    continue
                if isinstance(payload.get("id"), str):
                    self.stream_id = self.stream_id or payload["id"]
                content = _delta_content(payload)
                if not content:
                    self.gate.hold(lines)
                    continue
                for released in self._release(await self.judging.run(self.gate.push, lines, content)):
                    yield released
                if self.gate.stopped:
                    break
            tail = [] if self.gate.stopped else await self.judging.run(self.gate.finish)
        except (httpx.HTTPError, _LineTooLong) as err:
            self.gate.drop()
            yield _stream_error(err, max_line_bytes)  # unjudged held text is dropped with the stream
            return
        except PsaGuardError as err:  # the guard could not judge the answer: nothing more is released
            self.gate.drop()
            yield sse(api_error_from(err).body())
            return
        self.judging.count()
        last = self.judging.monitor.verdict
        if last is not None and last.flagged:
            for event in self._filtered(last):
                yield event
            return
        for released in self._release(tail, last):
            yield released
        yield sse_done()

    def _release(self, pieces: list[list[str]], last: ResponseVerdict | None = None) -> list[bytes]:
        """The released events; the first released data event gets the request's verdict, the last one of the
        final release (``last``: the answer's verdict) the answer's."""
        out = []
        for lines in pieces:
            if not self.tagged:
                lines, self.tagged = _with_field(lines, "psaguard", self.verdict)
            out.append(lines)
        if out and last is not None:
            for index in range(len(out) - 1, -1, -1):  # the last event with JSON data: usually the finish chunk
                out[index], tagged = _with_field(out[index], "psaguard_response", last)
                if tagged:
                    break
        return [_event_bytes(lines) for lines in out]

    def _filtered(self, verdict: ResponseVerdict) -> list[bytes]:
        """The end of a flagged answer: the replacement ('replace'), the filtered finish, [DONE]."""
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


async def _judge_completion(answer: dict[str, Any], judging: _Judging) -> None:
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
