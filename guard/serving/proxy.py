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

from psaguard.conversation import judged_text, with_hint
from psaguard.errors import GuardBlocked
from psaguard.policy import GenerationOptions
from psaguard.serving.completions import REFUSAL_FINISH_REASON, chat_prompt, completion, refusal_events
from psaguard.serving.judging import Judge
from psaguard.serving.protocol import ApiError, ChatRequest, api_error_from, verdict_headers
from psaguard.verdict import SafetyVerdict

__all__ = ["ProxyChat"]

logger = logging.getLogger(__name__)


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

    async def complete(self, request: ChatRequest, raw: dict[str, Any]) -> Response:
        """Judge ``request``; answer the refusal or the block here, forward the rest (hinted if so decided)."""
        prompt = chat_prompt(request, self.judge.config.limits)
        images = await self.judge.load_images(prompt.images, "messages.image_url")
        verdict = await self.judge.verdict(judged_text(prompt.conversation), images)
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
        body = dict(raw)
        if verdict.action == "hint" and verdict.hint:
            body["messages"] = with_hint(raw["messages"], self.options.hint_template.format(hint=verdict.hint))
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
            _events(response, verdict),
            media_type="text/event-stream",
            headers=headers,
            background=BackgroundTask(response.aclose),
        )


async def _events(response: httpx.Response, verdict: SafetyVerdict) -> AsyncIterator[bytes]:
    """The upstream's server-sent events, each as soon as it is complete; the first data event gets the verdict."""
    lines: list[str] = []
    tagged = False
    try:
        async for line in response.aiter_lines():
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
