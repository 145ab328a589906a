from __future__ import annotations

import asyncio

import pytest
from gateway_test_fakes import oom_session_factory, probe, silent_cpu_session_factory

from gateway import metrics
from gateway.backends.fallback import SplittingFallback
from gateway.config import Settings
from gateway.domain import RerankQuery
from gateway.errors import ModelRepositoryError
from gateway.loading import ModelLoader
from gateway.pipeline import PipelineConfig, Reranker

QUERY = "How many people live in Berlin?"
DOCS = ("Berlin has 3.5 million inhabitants.", "New York is famous for museums.", "Paris.", "Rome is old.")


def settings(repo, **kw) -> Settings:
    return Settings(model_repository=repo, threads=1, **kw)


def test_cpu_loads_int8_and_the_prefilter(tiny_model_repository):
    loaded = ModelLoader.from_settings(settings(tiny_model_repository), gpu_probe=probe(0))()
    assert loaded.reranker.variant == "int8" and loaded.reranker.scorer.name == "onnx-cpu"
    assert loaded.prefilter is not None and loaded.prefilter.variant == "int8"
    assert "not used" in loaded.device_report["cuda"]


def test_fp32_precision_loads_an_fp32_variant(tiny_model_repository):
    # the device pinned: on a CUDA machine the real probe would take the GPU and its fp16 file
    loaded = ModelLoader.from_settings(
        settings(tiny_model_repository, cpu_precision="fp32", prefilter_name="", device="cpu")
    )()
    assert loaded.reranker.variant in ("fp32", "fp32-opt") and loaded.prefilter is None


def test_too_little_gpu_memory_stays_on_the_cpu(tiny_model_repository):
    sessions: list = []
    loader = ModelLoader.from_settings(
        settings(tiny_model_repository),
        gpu_probe=probe(100),
        session_factory=oom_session_factory(0, sessions),
    )
    loaded = loader()
    assert loaded.reranker.scorer.name == "onnx-cpu" and not sessions
    assert "MiB free" in loaded.device_report["cuda"]


def test_session_silently_on_cpu_is_not_taken_for_cuda(tiny_model_repository):
    loader = ModelLoader.from_settings(
        settings(tiny_model_repository), gpu_probe=probe(80_000), session_factory=silent_cpu_session_factory
    )
    loaded = loader()
    assert loaded.reranker.scorer.name == "onnx-cpu"
    assert "CPUExecutionProvider" in loaded.device_report["cuda"]


def test_cuda_oom_halves_then_falls_back_to_cpu_and_keeps_serving(tiny_model_repository):
    sessions: list = []
    s = settings(tiny_model_repository, keep=0)
    loader = ModelLoader.from_settings(
        s, gpu_probe=probe(80_000), session_factory=oom_session_factory(ok_rows=0, sessions=sessions)
    )
    reranker = Reranker(PipelineConfig.from_settings(s), loader)
    before = metrics.FALLBACKS.labels("onnx-cuda", "onnx-cpu", "cuda_oom", "reranker")._value.get()

    async def go():
        first = await reranker.rerank(RerankQuery(QUERY, DOCS))
        second = await reranker.rerank(RerankQuery(QUERY + "?", DOCS))
        await reranker.close()
        return first, second

    first, second = asyncio.run(go())
    assert isinstance(reranker.models.reranker.scorer, SplittingFallback)
    assert reranker.models.reranker.variant == "fp16"
    assert sessions[0].calls[:3] == [4, 2, 2]  # the batch, then its halves once
    assert first.backend == second.backend == "onnx-cpu"
    assert len(first.results) == 4
    assert (
        metrics.FALLBACKS.labels("onnx-cuda", "onnx-cpu", "cuda_oom", "reranker")._value.get() == before + 4
    )


def test_missing_repository_is_a_clear_error(tmp_path):
    with pytest.raises(ModelRepositoryError, match="make export"):
        ModelLoader.from_settings(settings(tmp_path))()
