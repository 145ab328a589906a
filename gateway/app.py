"""The composition root: the one place that builds the parts and wires them together.

Like TEI's `router/src/lib.rs` (tokenization, backend, queue, then `Infer`, then the HTTP server):
settings -> model loader (knows the runtimes) -> pipeline -> admission control -> HTTP app with its routers.
Everything below is handed what it needs, so the HTTP layer and the pipeline import no runtime
(`make lint` checks the arrows with import-linter contracts in pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from gateway.api.admission import Admission
from gateway.api.app import create_http_app
from gateway.api.deps import Services
from gateway.backends.factory import ModelLoader, describe_repository
from gateway.config import Settings
from gateway.pipeline import Reranker
from gateway.registry import ServedModel, ServedModels, describe_pipeline


def build_reranker(settings: Settings) -> Reranker:
    """The pipeline over the runtimes the settings ask for (local ONNX Runtime, or Triton + fallback)."""
    return Reranker(settings, ModelLoader(settings))


def create_app(settings: Settings, reranker: Reranker | None = None) -> FastAPI:
    """The service: `reranker` may be injected (tests build one over their own loader or scorers)."""
    reranker = reranker or build_reranker(settings)
    served = ServedModel(
        settings.model_name,
        reranker,
        aliases=tuple(settings.served_model_names),
        describe=describe_pipeline(reranker, settings.model_repository, settings.model_name),
    )
    services = Services(
        models=ServedModels([served]),
        admission=Admission(reranker, settings),
        api_keys=tuple(settings.api_keys),
        gpu=_gpu_probe(reranker.loader),
        describe_repository=lambda: describe_repository(settings),
    )
    return create_http_app(settings, services)


def _gpu_probe(loader: Any) -> Callable[[], dict[str, Any]]:
    """The loader's GPU probe (ModelLoader's NVML one); a loader a test built may have none."""
    probe = getattr(loader, "probe", None)
    if probe is None:
        return lambda: {"available": False, "reason": "unknown (custom loader)"}
    return lambda: dict(probe().as_dict())
