"""The HTTP layer's application: ops routes, error handlers, request ids + access log + metrics + timing
headers, body limit. It is handed its services (gateway/app.py, the composition root, builds them; routes
draw them through gateway/api/deps.py) and imports no runtime."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from gateway import errors, metrics
from gateway.api import routes_native, routes_ops
from gateway.api.deps import Services, bind
from gateway.api.dialects import include_dialects
from gateway.api.errors import NATIVE, drop_default_422, validation_failed
from gateway.config import Settings
from gateway.domain import RerankOutcome

log = logging.getLogger("gateway")
access_log = logging.getLogger("gateway.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def timing_headers(total_s: float, outcomes: Sequence[RerankOutcome]) -> list[tuple[bytes, bytes]]:
    """TEI's `x-*-time` headers, in whole milliseconds: the request's total, and the pipeline's phases
    (one rerank call per request: a batch request's queries share theirs)."""
    headers = [(b"x-total-time", _ms(total_s))]
    if outcomes:
        t = outcomes[0].timings
        headers += [
            (b"x-tokenization-time", _ms(t.tokenize)),
            (b"x-queue-time", _ms(t.lane_wait)),
            (b"x-inference-time", _ms(t.inference)),
        ]
    return headers


def _ms(seconds: float) -> bytes:
    return str(int(seconds * 1000)).encode()


class _BodyTooLarge(Exception):
    pass


def normalized(scope: Scope) -> Scope:
    """Two client habits answered instead of refused: a trailing slash (`POST /v1/rerank/` would be a 307,
    which clients do not follow for a POST) and a JSON body sent without a JSON content type (`curl -d`
    sends application/x-www-form-urlencoded): every route here takes JSON."""
    path: str = scope.get("path", "")
    if len(path) > 1 and path.endswith("/"):
        scope = {**scope, "path": path.rstrip("/") or "/"}
        raw = scope.get("raw_path")
        if isinstance(raw, bytes | bytearray):
            scope["raw_path"] = bytes(raw).rstrip(b"/") or b"/"
    if scope.get("method") in ("POST", "PUT", "PATCH"):
        headers = list(scope.get("headers") or [])
        kinds = [v for k, v in headers if k == b"content-type"]
        subtype = kinds[0].split(b";")[0].strip().lower() if kinds else b""
        if not (subtype.endswith(b"/json") or subtype.endswith(b"+json")):
            headers = [(k, v) for k, v in headers if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
    return scope


class RequestContext:
    """Pure ASGI middleware: request id in/out, body-size limit, one access-log line, HTTP metrics."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        scope = normalized(scope)
        headers = dict(scope.get("headers") or [])
        request_id = _request_id(headers)
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started_response = False
        limit = self.max_body_bytes

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                started_response = True
                status = message["status"]
                message.setdefault("headers", [])
                extra = [(b"x-request-id", request_id.encode())]
                outcomes = scope["state"].get("outcomes")
                if outcomes is not None:  # an inference route that ran the pipeline
                    extra += timing_headers(time.perf_counter() - started, outcomes)
                message["headers"] = [*message["headers"], *extra]
            await send(message)

        length = headers.get(b"content-length")
        try:
            if length is not None and length.isdigit() and int(length) > limit:
                raise _BodyTooLarge
            await self.app(scope, _limited(receive, limit), send_wrapper)
        except _BodyTooLarge:
            if started_response:
                raise
            exc = errors.LimitExceeded(
                f"request body larger than max_body_bytes ({limit} bytes)",
                limit="max_body_bytes",
                value=limit,
            )
            await NATIVE.respond(exc)(scope, receive, send_wrapper)
        finally:
            _record(scope, request_id, status, time.perf_counter() - started)


def _request_id(headers: dict[bytes, bytes]) -> str:
    """The client's X-Request-ID when it is printable (at most 128 characters), else a new one."""
    raw_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128]
    return raw_id if raw_id and raw_id.isprintable() else uuid.uuid4().hex


def _limited(receive: Receive, limit: int) -> Receive:
    """`receive` that stops a body once more than `limit` bytes of it have arrived."""
    received = 0

    async def receive_wrapper() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _BodyTooLarge
        return message

    return receive_wrapper


def _record(scope: Scope, request_id: str, status: int, elapsed: float) -> None:
    """The request's HTTP metrics and its one access-log line, with the served model it picked (empty before a
    model was chosen: ops routes, a body refused before its model was resolved)."""
    route = scope.get("route")
    path = getattr(route, "path", None) or "unmatched"
    state = scope["state"]
    model = state.get("model") or ""
    metrics.REQUESTS.labels(path, scope["method"], str(status), model).inc()
    metrics.REQUEST_LATENCY.labels(path, str(status), model).observe(elapsed)
    docs = state.get("documents")
    access_log.info(
        "%s %s %s %d %.1fms%s%s",
        request_id,
        scope["method"],
        scope["path"],
        status,
        elapsed * 1000,
        f" model={model}" if model else "",
        f" docs={docs}" if docs is not None else "",
    )


def add_error_handlers(app: FastAPI) -> None:
    """The native body for what no dialect route answers itself: typed errors with the table's status, body
    validation, and a generic 500 (logged with its traceback, no details sent)."""

    @app.exception_handler(errors.RerankError)
    async def _domain_error(request: Request, exc: errors.RerankError) -> JSONResponse:
        if NATIVE.status(exc) >= 500:
            log.warning("request %s failed: %s", getattr(request.state, "request_id", "?"), exc.message)
        return NATIVE.respond(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return NATIVE.respond(validation_failed(exc))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in request %s", getattr(request.state, "request_id", "?"))
        return JSONResponse({"error": "internal server error", "error_type": "internal"}, status_code=500)


def create_http_app(settings: Settings, services: Services) -> FastAPI:
    """The FastAPI app around `services`; the composition root (gateway/app.py) builds them."""
    served = services.models

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.preload:
            for model in served:
                await model.pipeline.load()
        try:
            yield
        finally:
            for model in served:
                await model.pipeline.close()

    app = FastAPI(
        title="Reranker gateway",
        version="0.1.0",
        description="Two-stage reranking (int8 CPU prefilter, then a cross-encoder) over ONNX Runtime or Triton.",
        lifespan=lifespan,
    )
    bind(app, services)
    routes_ops.bind_ops(app, routes_ops.ops_facts(settings, services.gpu))
    add_error_handlers(app)
    routes_ops.add_ops_routes(app)
    app.include_router(routes_native.router)
    include_dialects(app)
    app.add_middleware(RequestContext, max_body_bytes=settings.max_body_bytes)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = drop_default_422(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
