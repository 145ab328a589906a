"""FastAPI application: ops routes, the error table, request ids + access log + metrics, body limit."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import errors, metrics
from gateway.api import routes_rerank
from gateway.api.dialects import include_dialects
from gateway.api.executor import RerankExecutor
from gateway.config import Settings
from gateway.pipeline import Reranker

log = logging.getLogger("gateway")
access_log = logging.getLogger("gateway.access")

# The one table from domain errors to HTTP status codes.
STATUS: dict[type[errors.RerankError], int] = {
    errors.ValidationFailed: 422,
    errors.LimitExceeded: 413,
    errors.Overloaded: 429,
    errors.RequestTimedOut: 504,
    errors.Unauthorized: 401,
    errors.NotReady: 503,
    errors.ModelRepositoryError: 503,
    errors.BackendFailed: 424,
}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def status_of(exc: errors.RerankError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(exc: errors.RerankError) -> JSONResponse:
    status = status_of(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, errors.Overloaded):
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if isinstance(exc, errors.Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    body: dict[str, Any] = {"error": exc.message, "error_type": exc.error_type}
    if isinstance(exc, errors.LimitExceeded):
        body.update(limit=exc.limit, value=exc.value)
    return JSONResponse(body, status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        field = ".".join(loc) or "body"
        parts.append(f"{field}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


class _BodyTooLarge(Exception):
    pass


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
        headers = dict(scope.get("headers") or [])
        raw_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128]
        request_id = raw_id if raw_id and raw_id.isprintable() else uuid.uuid4().hex
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
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        async def respond(response: Response) -> None:
            await response(scope, receive, send_wrapper)

        length = headers.get(b"content-length")
        try:
            if length is not None and length.isdigit() and int(length) > limit:
                raise _BodyTooLarge
            received = 0

            async def receive_wrapper() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise _BodyTooLarge
                return message

            await self.app(scope, receive_wrapper, send_wrapper)
        except _BodyTooLarge:
            if started_response:
                raise
            exc = errors.LimitExceeded(
                f"request body larger than max_body_bytes ({limit} bytes)",
                limit="max_body_bytes",
                value=limit,
            )
            await respond(error_response(exc))
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            metrics.REQUESTS.labels(path, scope["method"], str(status)).inc()
            metrics.REQUEST_LATENCY.labels(path, str(status)).observe(elapsed)
            docs = scope["state"].get("documents")
            access_log.info(
                "%s %s %s %d %.1fms%s",
                request_id,
                scope["method"],
                scope["path"],
                status,
                elapsed * 1000,
                f" docs={docs}" if docs is not None else "",
            )


def create_app(settings: Settings, reranker: Reranker | None = None) -> FastAPI:
    """Build the app; `reranker` may be injected (tests), otherwise built from `settings`."""
    reranker = reranker or Reranker(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.preload:
            await reranker.load()
        try:
            yield
        finally:
            await reranker.close()

    app = FastAPI(
        title="Reranker gateway",
        version="0.1.0",
        description="Two-stage reranking (int8 CPU prefilter, then a cross-encoder) over ONNX Runtime or Triton.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.reranker = reranker
    app.state.executor = RerankExecutor(reranker, settings)
    app.state.gpu = _gpu_status(reranker)

    @app.exception_handler(errors.RerankError)
    async def _domain_error(request: Request, exc: errors.RerankError) -> JSONResponse:
        if status_of(exc) >= 500:
            log.warning("request %s failed: %s", request.state.request_id, exc.message)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _describe_validation(exc), "error_type": "validation"}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in request %s", getattr(request.state, "request_id", "?"))
        return JSONResponse({"error": "internal server error", "error_type": "internal"}, status_code=500)

    @app.get("/health", tags=["ops"], summary="Liveness (never loads a model)")
    async def health() -> dict[str, Any]:
        models = reranker.models
        return {
            "status": "ok",
            "cuda_available": bool(app.state.gpu.get("available")),
            "gpu": app.state.gpu,
            "models_loaded": [st.spec.name for st in models.stages()] if models else [],
            "backend": models.reranker.scorer.name if models else None,
        }

    @app.get("/ready", tags=["ops"], summary="Readiness: models loaded and a backend answers")
    async def ready() -> JSONResponse:
        if await reranker.ready():
            return JSONResponse({"status": "ready"})
        reason = "models are not loaded" if not reranker.loaded else "no backend can score"
        return JSONResponse({"error": reason, "error_type": "unhealthy"}, status_code=503)

    @app.get("/info", tags=["ops"], summary="Models, limits, backend")
    async def info() -> dict[str, Any]:
        from gateway.backends.factory import describe_repository

        out = reranker.info()
        out["repository"] = str(settings.model_repository)
        if not reranker.loaded:
            out["manifests"] = describe_repository(settings)
        out["limits"] = {
            "max_documents": settings.max_documents,
            "max_document_chars": settings.max_document_chars,
            "max_query_chars": settings.max_query_chars,
            "max_body_bytes": settings.max_body_bytes,
            "max_in_flight": settings.max_in_flight,
            "request_timeout_s": settings.request_timeout_s,
        }
        out["auth"] = bool(settings.api_keys)
        return out

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(routes_rerank.router)
    include_dialects(app, settings)
    app.add_middleware(RequestContext, max_body_bytes=settings.max_body_bytes)
    return app


def _gpu_status(reranker: Reranker) -> dict[str, Any]:
    """Probe once at start-up (NVML only, cheap) so /health answers without touching a model."""
    probe = getattr(reranker._loader, "probe", None)
    if probe is None:
        return {"available": False, "reason": "unknown (custom loader)"}
    try:
        return dict(probe().as_dict())
    except Exception as exc:
        return {"available": False, "reason": f"probe failed: {exc}"}
