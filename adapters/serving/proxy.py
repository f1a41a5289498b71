"""Proxy mode: a classifier-only guard judges each chat request, then refuses, blocks, hints or forwards it.

'allow' forwards the request body unchanged; 'hint' forwards it with the hint appended to the last user turn
(as guarded generation does); 'refuse' answers with a normal completion carrying the refusal (finish_reason
'content_filter') without calling upstream; 'block' answers 400 with the verdict. The upstream's answer comes
back with its status; a stream is passed through event by event, the first event carrying the verdict.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, Response, StreamingResponse

from psaguard.conversation import judged_text, to_conversation, with_hint
from psaguard.errors import GuardBlocked
from psaguard.policy import GenerationOptions
from psaguard.serving.admission import Ticket
from psaguard.serving.completions import REFUSAL_FINISH_REASON, chat_prompt, completion, refusal_events
from psaguard.serving.judging import Judge
from psaguard.serving.protocol import ApiError, ChatRequest, api_error_from, verdict_headers
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
        verdict = await self.judge.judge(prompt.images, judged_text(prompt.conversation), "messages.image_url", ticket)
        ticket.refund()  # judged: the images are not held while the upstream answers
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
        body = forwarded
        if verdict.action == "hint" and verdict.hint:
            body["messages"] = with_hint(body["messages"], self.options.hint_template.format(hint=verdict.hint))
        if request.stream:
            return await self._forward_stream(body, verdict)
        return await self._forward(body, verdict)

    async def _forward(self, body: dict[str, Any], verdict: SafetyVerdict) -> Response:
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
            return Response(response.content, status_code=response.status_code, headers=headers)
        if isinstance(answer, dict) and response.is_success:
            answer["psaguard"] = verdict.model_dump(mode="json")
        return JSONResponse(answer, status_code=response.status_code, headers=headers)

    async def _forward_stream(self, body: dict[str, Any], verdict: SafetyVerdict) -> Response:
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
        return StreamingResponse(
            _events(response, verdict, self.judge.config.limits.max_sse_line_bytes),
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


async def _events(response: httpx.Response, verdict: SafetyVerdict, max_line_bytes: int) -> AsyncIterator[bytes]:
    """The upstream's server-sent events, each as soon as it is complete; the first data event gets the verdict."""
    lines: list[str] = []
    tagged = False
    try:
        async for line in _lines(response, max_line_bytes):
            if line:
                lines.append(line)
                continue
            if not lines:
                continue
            if not tagged:
                lines, tagged = _with_verdict(lines, verdict)
            yield ("\n".join(lines) + "\n\n").encode()
            lines = []
    except httpx.HTTPError as err:  # the stream broke after the headers: say so in OpenAI's error event shape
        logger.warning("upstream stream failed: %s", err)
        error = {"error": {"message": f"upstream stream failed: {type(err).__name__}", "type": "server_error"}}
        yield f"data: {json.dumps(error)}\n\n".encode()
        return
    except _LineTooLong:
        logger.warning("upstream stream line over %d bytes; stream ended", max_line_bytes)
        message = f"upstream stream sent a line longer than {max_line_bytes} bytes"
        error = {"error": {"message": message, "type": "server_error", "code": "upstream_line_too_long"}}
        yield f"data: {json.dumps(error)}\n\n".encode()
        return
    if lines:
        yield ("\n".join(lines) + "\n\n").encode()


def _with_verdict(lines: list[str], verdict: SafetyVerdict) -> tuple[list[str], bool]:
    """The event with ``psaguard`` added to its JSON data, and whether it was a JSON data event."""
    data = [line for line in lines if line.startswith("data:")]
    if len(data) != 1:
        return lines, False
    try:
        payload = json.loads(data[0][len("data:") :])
    except ValueError:
        return lines, False
    if not isinstance(payload, dict):
        return lines, False
    payload["psaguard"] = verdict.model_dump(mode="json")
    tagged = "data: " + json.dumps(payload, separators=(",", ":"))
    return [tagged if line is data[0] else line for line in lines], True


def _unreachable(err: httpx.HTTPError, verdict: SafetyVerdict) -> ApiError:
    logger.warning("upstream call failed: %s: %s", type(err).__name__, err)
    return ApiError(
        502,
        f"the upstream model did not answer: {type(err).__name__}",
        type="server_error",
        code="upstream_unavailable",
        headers=verdict_headers(verdict),
    )
