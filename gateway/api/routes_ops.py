"""The ops routes: liveness, readiness, what is served and how, Prometheus metrics. They stay open when API
keys are set. Like every route they draw what they use from declared dependencies: the services
(gateway/api/deps.py) and the facts fixed at start-up (`OpsFacts`, bound by `bind_ops`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import errors, metrics
from gateway.api.deps import ServicesDep
from gateway.api.errors import NATIVE
from gateway.config import Settings


@dataclass(frozen=True)
class OpsFacts:
    """What /health and /info report that does not change while the app runs."""

    gpu: dict[str, Any]  # the GPU probe's answer, taken once at start-up (NVML only, no model touched)
    repository: str
    limits: dict[str, Any]
    auth: bool


def ops_facts(settings: Settings, probe: Callable[[], dict[str, Any]]) -> OpsFacts:
    return OpsFacts(
        gpu=_gpu_status(probe),
        repository=str(settings.model_repository),
        limits={
            "max_documents": settings.max_documents,
            "max_document_chars": settings.max_document_chars,
            "max_query_chars": settings.max_query_chars,
            "max_body_bytes": settings.max_body_bytes,
            "max_in_flight": settings.max_in_flight,
            "request_timeout_s": settings.request_timeout_s,
        },
        auth=bool(settings.api_keys),
    )


async def get_ops_facts() -> OpsFacts:
    raise RuntimeError("the app's ops facts were never bound: call gateway.api.routes_ops.bind_ops")


def bind_ops(app: FastAPI, facts: OpsFacts) -> None:
    async def bound() -> OpsFacts:
        return facts

    app.dependency_overrides[get_ops_facts] = bound


OpsFactsDep = Annotated[OpsFacts, Depends(get_ops_facts)]


async def health(services: ServicesDep, facts: OpsFactsDep) -> dict[str, Any]:
    """Each served model's state, backend and device (`served_models`); the default model's backend at the top
    level, as the first version had it."""
    models = services.models.default.pipeline.models
    loaded = [
        stage.spec.name
        for served in services.models
        if served.pipeline.models is not None
        for stage in served.pipeline.models.stages()
    ]
    return {
        "status": "ok",
        "cuda_available": bool(facts.gpu.get("available")),
        "gpu": facts.gpu,
        "models_loaded": list(dict.fromkeys(loaded)),
        "backend": models.reranker.scorer.name if models else None,
        # the first version's field: the cross-encoder is loaded and runs on a GPU
        "gpu_model_loaded": models is not None and "cuda" in models.reranker.scorer.name,
        "served_models": {served.name: served.pipeline.status() for served in services.models},
    }


async def ready(services: ServicesDep) -> JSONResponse:
    """Ready when every served model's pipeline is (with several, the message names the one that is not)."""
    served = services.models
    for model in served:
        pipeline = model.pipeline
        if not await pipeline.ready():
            reason = "models are not loaded" if not pipeline.loaded else "no backend can score"
            if len(served) > 1:
                reason += f" ({model.name})"
            return NATIVE.respond(errors.NotReady(reason))
    return JSONResponse({"status": "ready"})


async def info(services: ServicesDep, facts: OpsFactsDep) -> dict[str, Any]:
    """The default model's pipeline as it describes itself, the repository, the limits, whether keys are on,
    and every served model as it describes itself (`served_models`: state, backend, device, speed, ...)."""
    reranker = services.models.default.pipeline
    out = reranker.info()
    out["repository"] = facts.repository
    if not reranker.loaded:
        out["manifests"] = services.describe_repository()
    out["limits"] = dict(facts.limits)
    out["auth"] = facts.auth
    out["served_models"] = {served.name: served.pipeline.info() for served in services.models}
    return out


async def prometheus(request: Request) -> Response:
    accept = request.headers.get("accept", "")
    if "application/json" in accept and "text/plain" not in accept:
        return JSONResponse(metrics.json_snapshot())
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def add_ops_routes(app: FastAPI) -> None:
    """On the app itself, not an included router: they are the app's own (deploy/check.py reads
    `app.routes` for the chart's probe paths)."""
    ops: dict[str, Any] = {"methods": ["GET"], "tags": ["ops"]}
    app.add_api_route("/health", health, summary="Liveness (never loads a model)", **ops)
    app.add_api_route(
        "/ready",
        ready,
        summary="Readiness: models loaded and a backend answers",
        responses=NATIVE.responses([errors.NotReady], internal=False),
        **ops,
    )
    app.add_api_route("/info", info, summary="Models, limits, backend", **ops)
    app.add_api_route(
        "/metrics", prometheus, summary="Prometheus metrics (JSON with Accept: application/json)", **ops
    )


def _gpu_status(probe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Probe once at start-up so /health answers without touching a model."""
    try:
        return dict(probe())
    except Exception as exc:
        return {"available": False, "reason": f"probe failed: {exc}"}
