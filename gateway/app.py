"""The composition root: the one place that builds the parts and wires them together.

Like TEI's `router/src/lib.rs` (tokenization, backend, queue, then `Infer`, then the HTTP server):
settings -> model loader (gateway/loading.py, knows the runtimes) -> pipeline -> admission control -> HTTP app
with its routers. Each part is handed the slice of the settings it uses, so the HTTP layer and the pipeline
import no runtime (`make lint` checks the arrows with import-linter contracts in pyproject.toml).
"""

from __future__ import annotations

from fastapi import FastAPI

from gateway import metrics
from gateway.api.admission import Admission, AdmissionConfig
from gateway.api.app import Parts, create_http_app
from gateway.backends.gpu_probe import GpuProbe, NvmlProbe
from gateway.cache import PairScoreCache
from gateway.config import Settings
from gateway.loading import LoadOptions, ModelLoader, describe_repository
from gateway.pipeline import PipelineConfig, Reranker


def build_reranker(settings: Settings, *, gpu_probe: GpuProbe | None = None) -> Reranker:
    """The pipeline over the runtimes the settings ask for (local ONNX Runtime, or Triton + fallback)."""
    loader = ModelLoader(LoadOptions.from_settings(settings), gpu_probe=gpu_probe)
    cache = PairScoreCache(settings.cache_size, settings.cache_ttl_s)
    return Reranker(PipelineConfig.from_settings(settings), loader, cache=cache)


def create_app(
    settings: Settings, reranker: Reranker | None = None, *, gpu_probe: GpuProbe | None = None
) -> FastAPI:
    """The service: `reranker` may be injected (tests build one over their own loader or scorers)."""
    probe = gpu_probe or NvmlProbe()
    reranker = reranker or build_reranker(settings, gpu_probe=probe)
    cache = reranker.cache
    metrics.PROCESS.cache_ratio = lambda: cache.hit_ratio
    metrics.PROCESS.cache_entries = lambda: len(cache)

    def gpu() -> dict[str, object]:
        if settings.device == "cpu":
            return {"available": False, "reason": "RERANKER_DEVICE=cpu"}
        return dict(probe.probe().as_dict())

    parts = Parts(
        reranker=reranker,
        admission=Admission(reranker, AdmissionConfig.from_settings(settings)),
        gpu=gpu,
        describe_repository=lambda: describe_repository(
            settings.model_repository, [settings.model_name, settings.prefilter_name]
        ),
    )
    return create_http_app(settings, parts)
