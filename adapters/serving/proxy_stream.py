"""The upstream's event stream in proxy mode: passed on event by event with the request's verdict
(:func:`tagged_events`), or held until judged (:class:`HeldStream`, through the answer's
:class:`~psaguard.generation.release_gate.ReleaseGate`); :class:`AnswerJudging` runs the answer's monitor off the
event loop. Lines are capped (``limits.max_sse_line_bytes``); a broken upstream ends the stream with an error event."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import httpx

from psaguard.errors import PsaGuardError
from psaguard.generation.monitor import AnswerMonitor
from psaguard.generation.release_gate import ReleaseGate
from psaguard.serving.completions import REFUSAL_FINISH_REASON, chunk, completion_id, sse, sse_done
from psaguard.serving.metrics import ServeMetrics
from psaguard.serving.protocol import api_error_from
from psaguard.verdict import ResponseVerdict, SafetyVerdict

__all__ = ["AnswerJudging", "HeldStream", "tagged_events"]

logger = logging.getLogger(__name__)


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


async def tagged_events(response: httpx.Response, verdict: SafetyVerdict, max_line_bytes: int) -> AsyncIterator[bytes]:
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


class AnswerJudging:
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


class HeldStream:
    """An upstream answer stream released only as far as it has been judged (see the module docstring).

    Each event with answer text goes through the answer's :class:`ReleaseGate` (judged when due, released
    when all the text up to it is); events without text (the role chunk, tool-call chunks, the finish chunk)
    wait in the gate for the next release; when the upstream ends, the whole answer is judged before the rest
    is released. A flagged answer ends the stream: the replacement (for 'replace'), a last chunk with
    ``finish_reason: "content_filter"`` and the answer's verdict, ``[DONE]``. Nothing past the released events
    is ever sent; comments and events that are not JSON data are not passed on.
    """

    def __init__(self, verdict: SafetyVerdict, judging: AnswerJudging, model: str) -> None:
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
                for released in await self._step(lines):
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
        for event in self._end(tail):
            yield event

    async def _step(self, lines: list[str]) -> list[bytes]:
        """The events one upstream event releases: an event with answer text goes through the gate (judged when
        due); one without waits in the gate; comments, keep-alives, anything but a JSON data event are dropped."""
        payload = _payload(lines)
        if payload is None:
            return []
        if isinstance(payload.get("id"), str):
            self.stream_id = self.stream_id or payload["id"]
        content = _delta_content(payload)
        if not content:
            self.gate.hold(lines)
            return []
        return self._release(await self.judging.run(self.gate.push, lines, content))

    def _end(self, tail: list[list[str]]) -> list[bytes]:
        """The end of a judged stream: the filtered end of a flagged answer, else the rest released and [DONE]."""
        self.judging.count()
        last = self.judging.monitor.verdict
        if last is not None and last.flagged:
            return self._filtered(last)
        return [*self._release(tail, last), sse_done()]

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
