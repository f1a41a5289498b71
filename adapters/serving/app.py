"""The FastAPI application: routes, authentication, body limits, error mapping, metrics and lifecycle.

``create_app(guard, config)`` builds one app around one guard. Its lifespan starts the batcher (and the
upstream client in proxy mode) and, on shutdown, judges every queued request before it stops, so a graceful
server shutdown (uvicorn's on SIGTERM) finishes the requests in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
from fastapi import FastAPI, Request
from pydantic import ValidationError
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response

from psaguard.errors import ConfigError, GuardBlocked, PsaGuardError
from psaguard.guard import SafetyGuard
from psaguard.serving.admission import PixelBudget, Ticket
from psaguard.serving.auth import ApiKeys
from psaguard.serving.batching import DynamicBatcher
from psaguard.serving.bodies import count_chat, count_moderation, read_request
from psaguard.serving.config import ServeConfig
from psaguard.serving.inputs import ImageLoader
from psaguard.serving.judging import Judge
from psaguard.serving.local import LocalChat
from psaguard.serving.metrics import CONTENT_TYPE_LATEST, ServeMetrics
from psaguard.serving.moderation import moderate
from psaguard.serving.protocol import ApiError, ChatRequest, ModerationRequest, api_error_from
from psaguard.serving.proxy import ProxyChat

__all__ = ["ServeState", "create_app", "pixels_in_flight"]

logger = logging.getLogger(__name__)

_OPEN_PATHS = ("/healthz", "/readyz")  # probes answer without a key; everything else needs one when keys are set


@dataclass
class ServeState:
    """What the routes share: the guard, its settings, metrics and the request handlers."""

    guard: SafetyGuard
    config: ServeConfig
    keys: ApiKeys
    metrics: ServeMetrics
    batcher: DynamicBatcher
    judge: Judge
    budget: PixelBudget
    chat: LocalChat | ProxyChat | None = None


def create_app(
    guard: SafetyGuard,
    config: ServeConfig | None = None,
    *,
    api_keys: ApiKeys | None = None,
    metrics: ServeMetrics | None = None,
) -> FastAPI:
    """The psaguard server for ``guard``: moderations, chat completions (local or proxy), probes and metrics."""
    config = config or ServeConfig()
    if config.mode == "proxy" and not config.upstream:
        raise ConfigError("proxy mode needs an upstream URL")
    if config.mode == "local" and config.check_answers and guard.policy.response.monitor is False:
        raise ConfigError(
            "the guard's policy turns the streaming monitor off (response.monitor: false) but the server checks "
            "answers (check_answers=True); turn one of them off"
        )
    metrics = metrics or ServeMetrics()
    batcher = DynamicBatcher(
        partial(guard.classify_requests, on_text_only=config.on_text_only),
        max_batch=config.batching.max_batch,
        max_wait_ms=config.batching.max_wait_ms,
        max_queue=config.batching.max_queue,
        metrics=metrics,
    )
    loader = ImageLoader(
        config.limits, guard.config.max_image_pixels, config.image_url_allowlist, formats=guard.config.image_formats
    )
    judge = Judge(guard, config, batcher, loader, metrics)
    budget = PixelBudget(pixels_in_flight(config, guard), metrics)
    state = ServeState(guard, config, api_keys or ApiKeys(), metrics, batcher, judge, budget)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        clients = []
        if config.image_url_allowlist:
            loader.client = httpx.AsyncClient(timeout=10.0)
            clients.append(loader.client)
        if config.mode == "proxy":
            upstream = httpx.AsyncClient(timeout=config.upstream_timeout_s)
            clients.append(upstream)
            state.chat = ProxyChat(judge, upstream)
        else:
            state.chat = LocalChat(judge)
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            for client in clients:
                await client.aclose()

    app = FastAPI(title="psaguard", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.psaguard = state
    _add_middleware(app, state)
    if config.cors_origins:  # added last, so outermost: a browser's preflight (no key) is answered before auth
        app.add_middleware(
            CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    _add_routes(app, state)
    return app


def _add_middleware(app: FastAPI, state: ServeState) -> None:
    @app.middleware("http")
    async def guard_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        path = request.url.path
        if path not in _OPEN_PATHS and not state.keys.allows(request.headers.get("authorization")):
            response: Response = _error_response(
                state,
                ApiError(401, "a valid API key is required (Authorization: Bearer <key>)", code="invalid_api_key"),
            )
        else:
            try:
                response = await call_next(request)
            except Exception as err:  # answered here (not by Starlette's outer handler), so it is counted too
                response = _internal_error(state, request, err)
        state.metrics.requests.labels(endpoint=_endpoint(path), status=str(response.status_code)).inc()
        state.metrics.observe("total", time.perf_counter() - start)
        return response


def _add_routes(app: FastAPI, state: ServeState) -> None:
    timeout = state.config.limits.request_timeout_s

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        ready = state.batcher.running and state.chat is not None
        return JSONResponse({"status": "ready" if ready else "starting"}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        model = {"id": state.config.model_name, "object": "model", "owned_by": "psaguard"}
        return {"object": "list", "data": [{**model, "compute_dtypes": state.guard.compute_dtypes}]}

    @app.post("/v1/moderations")
    async def moderations(request: Request) -> Response:
        body, _ = await read_request(request, state.config.limits, ModerationRequest, count_moderation)
        ticket = state.budget.ticket()
        try:
            result = await _bounded(moderate(body, state.judge, ticket), timeout, ticket)
        finally:
            ticket.release()
        return JSONResponse(result)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body, raw = await read_request(request, state.config.limits, ChatRequest, count_chat)
        assert state.chat is not None  # set by the lifespan before any request is served
        ticket = state.budget.ticket()
        try:
            return await _bounded(state.chat.complete(body, raw, ticket), timeout, ticket)
        finally:
            ticket.release()

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, err: ApiError) -> Response:
        return _error_response(state, err)

    @app.exception_handler(ValidationError)
    async def on_invalid(request: Request, err: ValidationError) -> Response:
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": str(err)}
        param = ".".join(str(part) for part in first["loc"]) or None
        return _error_response(state, ApiError(400, f"invalid request: {param}: {first['msg']}", param=param))

    @app.exception_handler(Exception)
    async def on_bug(request: Request, err: Exception) -> Response:
        return _internal_error(state, request, err)

    @app.exception_handler(PsaGuardError)
    async def on_guard_error(request: Request, err: PsaGuardError) -> Response:
        if isinstance(err, GuardBlocked):
            state.metrics.verdict(err.verdict)
        return _error_response(state, api_error_from(err))


def pixels_in_flight(config: ServeConfig, guard: SafetyGuard) -> int:
    """The in-flight pixel budget: the configured one (default twice the guard's image limit), never below one
    image of the largest size the guard accepts."""
    largest = guard.config.max_image_pixels
    return max(config.limits.max_pixels_in_flight or 2 * largest, largest)


async def _bounded(work: Awaitable[Any], timeout: float, ticket: Ticket) -> Any:
    """``work``'s result, or a 504 after ``timeout`` seconds: a request the guard did not judge in time is refused.
    A request that ends without its result (timed out, or its client left) cancels ``ticket``: model work still
    queued for it never starts, a generation stops at its next token."""
    try:
        return await asyncio.wait_for(work, timeout)
    except asyncio.TimeoutError as err:
        ticket.cancellation.cancel()
        raise ApiError(
            504, f"the request was not judged within {timeout:g} s", type="server_error", code="timeout"
        ) from err
    except BaseException:
        ticket.cancellation.cancel()
        raise


def _internal_error(state: ServeState, request: Request, err: Exception) -> Response:
    # Not an input problem: nothing was judged or answered, so the request fails closed.
    logger.error("unexpected error on %s", request.url.path, exc_info=err)
    return _error_response(
        state, ApiError(500, f"internal error: {type(err).__name__}", type="server_error", code="internal_error")
    )


def _error_response(state: ServeState, err: ApiError) -> Response:
    state.metrics.errors.labels(code=err.code or err.type).inc()
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _endpoint(path: str) -> str:
    """A bounded label for the requests metric (arbitrary paths would grow it without bound)."""
    known = ("/v1/moderations", "/v1/chat/completions", "/v1/models", "/healthz", "/readyz", "/metrics")
    return path if path in known else "other"
