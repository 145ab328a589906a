"""The composition root: the one place that builds the parts and wires them together.

Like TEI's `router/src/lib.rs` (tokenization, backend, queue, then `Infer`, then the HTTP server):
settings -> each served model's manifest, read once -> model loaders (gateway/loading.py, knows the runtimes)
-> one pipeline per served model -> the registry of served models -> admission control -> HTTP app with its
routers. Each part is handed the slice of the settings it uses, merged per model with that model's table in
the models file (`Settings.for_model`), so the HTTP layer and the pipeline import no runtime (`make lint`
checks the arrows with import-linter contracts in pyproject.toml).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fastapi import FastAPI

from gateway import metrics
from gateway.admission import Admission, AdmissionConfig
from gateway.api.app import create_http_app
from gateway.api.deps import Services
from gateway.backends.gpu_probe import GpuProbe, NvmlProbe
from gateway.cache import PairScoreCache
from gateway.config import Settings
from gateway.errors import ModelRepositoryError
from gateway.loading import (
    LoadOptions,
    Manifests,
    ModelLoader,
    SessionFactory,
    describe_repository,
    read_manifests,
)
from gateway.pipeline import PipelineConfig, Reranker, default_pool
from gateway.registry import ServedModel, ServedModels, describe_pipeline
from gateway.repository import ModelSpec, read_model_spec


def build_reranker(settings: Settings, *, gpu_probe: GpuProbe | None = None) -> Reranker:
    """The default model's pipeline over the runtimes the settings ask for (local ONNX Runtime, or Triton +
    fallback)."""
    loader = ModelLoader(LoadOptions.from_settings(settings), gpu_probe=gpu_probe)
    cache = PairScoreCache(settings.cache_size, settings.cache_ttl_s)
    return Reranker(PipelineConfig.from_settings(settings), loader, cache=cache)


def build_served_models(
    settings: Settings,
    manifests: Manifests,
    *,
    prefilter: ModelSpec | None = None,
    gpu_probe: GpuProbe | None = None,
    cpu_session_factory: SessionFactory | None = None,
) -> ServedModels[Reranker]:
    """One pipeline per served model (`manifests`, the default first), each over its own settings, sharing the
    pair cache (keyed by model version), the tokenization threads, the CPU lane (where each model has its
    weight) and the prefilter. Each measures its speed at load (a warm-up), which admission prices it by."""
    names = list(manifests)
    options = [
        replace(
            LoadOptions.for_model(settings, name, spec=_spec(manifests[name]), prefilter_spec=prefilter),
            served_models=len(names),
        )
        for name in names
    ]
    base = ModelLoader(options[0], gpu_probe=gpu_probe, cpu_session_factory=cpu_session_factory)
    cache = PairScoreCache(settings.cache_size, settings.cache_ttl_s)
    pool = default_pool()
    served = []
    for position, name in enumerate(names):
        loader = base if position == 0 else base.for_model(options[position])
        config = PipelineConfig.from_settings(settings.for_model(name), name)
        reranker = Reranker(config, loader, cache=cache, pool=pool, warm_up=True)
        aliases = settings.model_table(name).aliases
        if position == 0:
            aliases = tuple(dict.fromkeys((*settings.served_model_names, *aliases)))
        served.append(_served(settings, name, reranker, aliases, manifests.get(name)))
    return ServedModels(served)


def create_app(
    settings: Settings,
    reranker: Reranker | None = None,
    *,
    gpu_probe: GpuProbe | None = None,
    cpu_session_factory: SessionFactory | None = None,
) -> FastAPI:
    """The service. `reranker` may be injected (tests build one over their own loader or scorers); it is then
    the one served model. The GPU probe and the CPU sessions' factory may be injected too (tests)."""
    probe = gpu_probe or NvmlProbe()
    shown: dict[str, ModelSpec | ModelRepositoryError] = {}
    if settings.prefilter_name:
        shown[settings.prefilter_name] = _read(settings, settings.prefilter_name)
    if reranker is not None:
        name = settings.model_name
        manifests: Manifests = {name: _read(settings, name)}
        models = ServedModels(
            [_served(settings, name, reranker, tuple(settings.served_model_names), manifests[name])]
        )
    else:
        manifests = read_manifests(
            settings.model_repository,
            settings.configured_models,
            settings.model_name,
            settings.prefilter_name,
        )
        prefilter = _spec(shown.get(settings.prefilter_name))
        models = build_served_models(
            settings, manifests, prefilter=prefilter, gpu_probe=probe, cpu_session_factory=cpu_session_factory
        )
    cache = models.default.pipeline.cache
    metrics.PROCESS.cache_ratio = lambda: cache.hit_ratio
    metrics.PROCESS.cache_entries = lambda: len(cache)

    def gpu() -> dict[str, Any]:
        if settings.device == "cpu":
            return {"available": False, "reason": "RERANKER_DEVICE=cpu"}
        return dict(probe.probe().as_dict())

    admission = Admission(
        models.default.pipeline,
        AdmissionConfig.from_settings(settings),
        {
            served.pipeline.name: AdmissionConfig.from_settings(
                settings.for_model(served.name), weight=settings.model_table(served.name).weight
            )
            for served in models
        },
    )
    shown = {**manifests, **shown}  # the served models first, then the prefilter
    services = Services(
        models=models,
        admission=admission,
        api_keys=tuple(settings.api_keys),
        gpu=gpu,
        describe_repository=lambda: describe_repository(shown),
    )
    return create_http_app(settings, services)


def _read(settings: Settings, name: str) -> ModelSpec | ModelRepositoryError:
    try:
        return read_model_spec(settings.model_repository, name)
    except ModelRepositoryError as exc:
        return exc


def _spec(entry: ModelSpec | ModelRepositoryError | None) -> ModelSpec | None:
    return entry if isinstance(entry, ModelSpec) else None


def _served(
    settings: Settings,
    name: str,
    reranker: Reranker,
    aliases: tuple[str, ...],
    manifest: ModelSpec | ModelRepositoryError | None,
) -> ServedModel[Reranker]:
    """A served model for the registry, described from its manifest (family, default instruction: the
    models file's when it sets one)."""
    spec = _spec(manifest)
    family = spec.family if spec else None
    instruction = settings.model_table(name).default_instruction
    if instruction is None and spec is not None and spec.template is not None:
        instruction = spec.template.default_instruction
    describe = describe_pipeline(reranker, spec, name, family=family, default_instruction=instruction)
    return ServedModel(name, reranker, aliases=aliases, describe=describe)
