"""The composition root: the one place that builds the parts and wires them together.

Like TEI's `router/src/lib.rs` (tokenization, backend, queue, then `Infer`, then the HTTP server):
settings -> model loaders (gateway/loading.py, knows the runtimes) -> one pipeline per served model -> the
registry of served models -> admission control -> HTTP app with its routers. Each part is handed the slice of
the settings it uses, so the HTTP layer and the pipeline import no runtime (`make lint` checks the arrows
with import-linter contracts in pyproject.toml).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from gateway import metrics
from gateway.api.admission import Admission, AdmissionConfig
from gateway.api.app import create_http_app
from gateway.api.deps import Services
from gateway.backends.gpu_probe import GpuProbe, NvmlProbe
from gateway.cache import PairScoreCache
from gateway.config import Settings
from gateway.errors import ModelRepositoryError
from gateway.loading import LoadOptions, ModelLoader, describe_repository, served_model_names
from gateway.pipeline import PipelineConfig, Reranker, default_pool
from gateway.registry import ServedModel, ServedModels, describe_pipeline
from gateway.repository import read_model_spec


def build_reranker(settings: Settings, *, gpu_probe: GpuProbe | None = None) -> Reranker:
    """The default model's pipeline over the runtimes the settings ask for (local ONNX Runtime, or Triton +
    fallback)."""
    loader = ModelLoader(LoadOptions.from_settings(settings), gpu_probe=gpu_probe)
    cache = PairScoreCache(settings.cache_size, settings.cache_ttl_s)
    return Reranker(PipelineConfig.from_settings(settings), loader, cache=cache)


def build_served_models(settings: Settings, *, gpu_probe: GpuProbe | None = None) -> ServedModels[Reranker]:
    """One pipeline per served model (RERANKER_MODELS), sharing the pair cache (keyed by model version), the
    tokenization threads, the CPU lane and the prefilter; the first is the default."""
    names = served_model_names(
        settings.model_repository, settings.models, settings.model_name, settings.prefilter_name
    )
    base = ModelLoader(LoadOptions.from_settings(settings, names[0]), gpu_probe=gpu_probe)
    cache = PairScoreCache(settings.cache_size, settings.cache_ttl_s)
    pool = default_pool()
    config = PipelineConfig.from_settings(settings)
    served = []
    for position, name in enumerate(names):
        loader = base if position == 0 else base.for_model(LoadOptions.from_settings(settings, name))
        reranker = Reranker(config, loader, cache=cache, pool=pool)
        aliases = tuple(settings.served_model_names) if position == 0 else ()
        served.append(_served(settings, name, reranker, aliases))
    return ServedModels(served)


def create_app(
    settings: Settings, reranker: Reranker | None = None, *, gpu_probe: GpuProbe | None = None
) -> FastAPI:
    """The service. `reranker` may be injected (tests build one over their own loader or scorers); it is then
    the one served model."""
    probe = gpu_probe or NvmlProbe()
    if reranker is not None:
        models = ServedModels(
            [_served(settings, settings.model_name, reranker, tuple(settings.served_model_names))]
        )
    else:
        models = build_served_models(settings, gpu_probe=probe)
    cache = models.default.pipeline.cache
    metrics.PROCESS.cache_ratio = lambda: cache.hit_ratio
    metrics.PROCESS.cache_entries = lambda: len(cache)

    def gpu() -> dict[str, Any]:
        if settings.device == "cpu":
            return {"available": False, "reason": "RERANKER_DEVICE=cpu"}
        return dict(probe.probe().as_dict())

    services = Services(
        models=models,
        admission=Admission(models.default.pipeline, AdmissionConfig.from_settings(settings)),
        api_keys=tuple(settings.api_keys),
        gpu=gpu,
        describe_repository=lambda: describe_repository(
            settings.model_repository, [*(m.name for m in models), settings.prefilter_name]
        ),
    )
    return create_http_app(settings, services)


def _served(
    settings: Settings, name: str, reranker: Reranker, aliases: tuple[str, ...]
) -> ServedModel[Reranker]:
    """A served model for the registry, described from its manifest (family, default instruction)."""
    family = instruction = None
    try:
        spec = read_model_spec(settings.model_repository, name)
        family = spec.family
        instruction = spec.template.default_instruction if spec.template else None
    except ModelRepositoryError:
        pass  # not exported yet: /v1/models says what it can, the load reports the problem
    describe = describe_pipeline(
        reranker, settings.model_repository, name, family=family, default_instruction=instruction
    )
    return ServedModel(name, reranker, aliases=aliases, describe=describe)
