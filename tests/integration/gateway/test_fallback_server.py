"""GPU -> CPU fallback over a real uvicorn server: injected GPU probe and a CUDA session that runs out of memory."""

from __future__ import annotations

import re

import httpx
import pytest
from conftest import ThreadServer
from gateway_test_fakes import oom_session_factory, probe

from gateway.api.schemas import RerankResponse
from gateway.app import create_app
from gateway.config import Settings
from gateway.loading import ModelLoader
from gateway.pipeline import PipelineConfig, Reranker

pytestmark = [pytest.mark.slow, pytest.mark.real_models]

QUERY = "How many people live in Berlin?"
DOCS = [
    "New York City is famous for the Metropolitan Museum of Art.",
    "Berlin has a population of 3,520,031 registered inhabitants in an area of 891.82 square kilometers.",
    "Cats sleep for most of the day.",
]


def build(repo, gpu_free_mb: int) -> tuple[object, list]:
    settings = Settings(model_repository=repo, threads=2, prefilter_name="", keep=0)
    sessions: list = []
    gpu = probe(gpu_free_mb)
    loader = ModelLoader.from_settings(
        settings, gpu_probe=gpu, session_factory=oom_session_factory(0, sessions)
    )
    return create_app(
        settings, Reranker(PipelineConfig.from_settings(settings), loader), gpu_probe=gpu
    ), sessions


def fallbacks(metrics_text: str) -> float:
    m = re.search(
        r'reranker_fallbacks_total\{from_backend="onnx-cuda",model="reranker",reason="cuda_oom",to_backend="onnx-cpu"\} ([\d.]+)',
        metrics_text,
    )
    return float(m.group(1)) if m else 0.0


def test_too_little_gpu_memory_serves_on_the_cpu(real_model_repository):
    app, sessions = build(real_model_repository, gpu_free_mb=64)
    with ThreadServer(app) as server:
        health = httpx.get(server.url + "/health").json()
        assert health["cuda_available"] is True and health["backend"] == "onnx-cpu"
        info = httpx.get(server.url + "/info").json()
        assert "64 MiB free" in info["device"]["cuda"]
        r = httpx.post(server.url + "/rerank", json={"query": QUERY, "documents": DOCS}, timeout=60)
        body = RerankResponse.model_validate(r.json())
        assert body.backend == "onnx-cpu" and body.results[0].index == 1
    assert sessions == []  # no CUDA session was even created


def test_cuda_oom_at_run_time_falls_back_to_cpu_and_keeps_serving(real_model_repository):
    app, sessions = build(real_model_repository, gpu_free_mb=80_000)
    with ThreadServer(app) as server:
        assert httpx.get(server.url + "/health").json()["backend"] == "onnx-cuda"
        before = fallbacks(httpx.get(server.url + "/metrics").text)
        for query in (QUERY, QUERY + " Give the number."):  # two requests, no cache hit
            r = httpx.post(server.url + "/rerank", json={"query": query, "documents": DOCS}, timeout=60)
            assert r.status_code == 200, r.text
            body = RerankResponse.model_validate(r.json())
            assert body.backend == "onnx-cpu" and body.results[0].index == 1
        after = fallbacks(httpx.get(server.url + "/metrics").text)
        assert httpx.get(server.url + "/ready").status_code == 200
    assert sessions[0].calls[:3] == [3, 1, 2]  # the batch, then its halves, once
    assert after - before == 4  # two halves per request, both scored on the CPU
