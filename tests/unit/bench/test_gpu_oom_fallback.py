"""The CUDA OOM path that `make gpu-check` forces, on the CPU: the real loader, fallback scorer, pipeline and
HTTP app, with a "CUDA" session that fails the way ONNX Runtime's arena does under a small `gpu_mem_limit`.

tests/unit/gateway/test_factory.py and test_fallback.py already cover the halving and the CPU fallback with
CUDA's own "out of memory" text. Here: the arena's text that gpu_mem_limit really produces (read off an H200),
a batch whose halves split between the GPU and the CPU, the request answering 200, the counter as /metrics exposes it, and gpu-check's own evidence (`oom_evidence`) read from the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from bench.gpu_measure import RecordingSession, oom_evidence, oom_problems
from gateway.app import create_app
from gateway.backends.fallback import FallbackScorer
from gateway.backends.gpu_probe import FixedProbe, GpuStatus
from gateway.backends.onnx_local import make_session
from gateway.config import Settings
from gateway.loading import ModelLoader
from gateway.pipeline import PipelineConfig, Reranker
from gateway.repository import read_model_spec

QUERY = "How many people live in Berlin?"
DOCS = [
    "Berlin has 3.5 million inhabitants.",
    "New York is famous for museums.",
    "Paris is the capital of France.",
    "Rome is old.",
    "Berlin's population grew in 2020.",
    "Bananas are yellow.",
    "Trains run on rails.",
]
LABELS = {"from_backend": "onnx-cuda", "to_backend": "onnx-cpu", "reason": "cuda_oom", "model": "reranker"}
# Verbatim from the first `make gpu-check` on a GPU (onnxruntime-gpu 1.31.1, H200, gpu_mem_limit 51 MiB). The text
# this test carried before, written from onnxruntime's source, ended in "Failed to allocate memory for requested
# buffer"; 1.31.1 does not print that, so the gateway read the refusal as a plain runtime error (no halving, no
# cuda_oom count) until classify_failure learned the arena's own words.
ARENA_OOM = (
    "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Gather node. "
    "Name:'/bert/embeddings/token_type_embeddings/Gather' Status Message: "
    "/onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:360 void* onnxruntime::BFCArena::AllocateRawInternal"
    "(size_t, bool, onnxruntime::Stream*) Available memory of 1453568 is smaller than requested bytes of 12582912"
)


class ArenaLimitedSession:
    """Claims the CUDA provider; batches above `ok_rows` rows fail like the CUDA arena at its gpu_mem_limit.
    The rest run on the CPU (the fp32 file: what the GPU would compute, within fp16's error)."""

    def __init__(self, path: Path, ok_rows: int) -> None:
        self._inner = make_session(path, device="cpu", threads=1)
        self.ok_rows = ok_rows

    def run(self, output_names: Any, feed: dict[str, Any]) -> Any:
        if int(feed["input_ids"].shape[0]) > self.ok_rows:
            raise RuntimeError(ARENA_OOM)
        return self._inner.run(output_names, feed)

    def get_inputs(self) -> Any:
        return self._inner.get_inputs()

    def get_outputs(self) -> Any:
        return self._inner.get_outputs()

    def get_providers(self) -> list[str]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture
def oom_app(tiny_model_repository: Path):
    settings = Settings.model_validate(
        {
            "model_repository": tiny_model_repository,
            "prefilter_name": "",
            "keep": 0,
            "cache_size": 0,
            "threads": 1,
            "device": "cuda",
        }
    )
    fp32 = read_model_spec(tiny_model_repository, "reranker").variant_path("fp32")
    assert fp32 is not None
    sessions: list[RecordingSession] = []

    def factory(path: Path, *, device: str, threads: int) -> RecordingSession:
        assert device == "cuda"
        sessions.append(RecordingSession(ArenaLimitedSession(fp32, ok_rows=3)))
        return sessions[-1]

    probe = FixedProbe(GpuStatus(True, free_mb=140_000, total_mb=143_771, name="Injected H200"))
    reranker = Reranker(
        PipelineConfig.from_settings(settings),
        ModelLoader.from_settings(settings, gpu_probe=probe, session_factory=factory),
    )
    with TestClient(create_app(settings, reranker, gpu_probe=probe)) as client:
        yield client, reranker, sessions


def test_an_arena_oom_halves_then_scores_the_half_that_still_fails_on_the_cpu(oom_app) -> None:
    client, reranker, sessions = oom_app
    before = REGISTRY.get_sample_value("reranker_fallbacks_total", LABELS) or 0.0
    r = client.post("/rerank", json={"query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(reranker.models.reranker.scorer, FallbackScorer)
    # 7 rows fail; the halves are 3 rows (fits: the GPU) and 4 rows (fails again: the CPU)
    assert [(c["rows"], c["outcome"]) for c in sessions[0].calls] == [(7, "failed"), (3, "ok"), (4, "failed")]
    assert body["backend"] == "onnx-cuda+onnx-cpu"
    assert sorted(item["index"] for item in body["results"]) == list(range(len(DOCS)))
    assert all(0.0 < item["relevance_score"] < 1.0 for item in body["results"])
    metrics_text = client.get("/metrics").text
    evidence = oom_evidence(sessions[0].calls, metrics_text, before)
    assert evidence["halved"] and evidence["gpu_calls_failed"] == 2
    assert evidence["fallbacks_cuda_oom"] == 1.0  # one half went to the CPU; the request did not fail
    assert evidence["metrics_line"] is not None and evidence["metrics_line"].startswith(
        "reranker_fallbacks_total{"
    )


def test_the_gpu_stays_in_service_after_an_oom(oom_app) -> None:
    client, _, sessions = oom_app
    first = client.post("/rerank", json={"query": QUERY, "documents": DOCS[:3]})
    second = client.post("/rerank", json={"query": QUERY, "documents": DOCS[3:6]})
    assert first.status_code == second.status_code == 200
    assert first.json()["backend"] == second.json()["backend"] == "onnx-cuda"  # 3 rows fit: no fallback
    assert [c["outcome"] for c in sessions[0].calls] == ["ok", "ok"]


def test_oom_evidence_without_a_fallback_says_so() -> None:
    calls = [{"rows": 4, "width": 16, "outcome": "ok"}]
    evidence = oom_evidence(calls, "reranker_requests_total 3.0\n")
    assert evidence == {
        "halved": False,
        "gpu_calls_failed": 0,
        "fallbacks_cuda_oom": 0.0,
        "metrics_line": None,
    }


def test_the_oom_section_fails_when_the_path_is_not_taken() -> None:
    """The first H200 run: every request answered 200 from the CPU, but no batch was halved and nothing was
    counted as cuda_oom. gpu-check passed that section then; now it names both."""
    first_h200 = {"requests": 2, "failed_requests": 0, "halved": False, "fallbacks_cuda_oom": 0.0}
    assert oom_problems(first_h200) == [
        "no failed GPU batch was retried in halves",
        'no CUDA -> CPU fallback counted with reason="cuda_oom"',
    ]
    assert oom_problems({**first_h200, "halved": True, "fallbacks_cuda_oom": 3.0}) == []
    assert oom_problems({**first_h200, "failed_requests": 1, "halved": True, "fallbacks_cuda_oom": 3.0}) == [
        "1 of 2 requests failed"
    ]


def test_halves_count_when_the_request_s_batches_all_failed_first() -> None:
    """The order the H200 run recorded: the 100 documents' four batches (32, 32, 32, 4 rows) failed, then their
    halves ran; the halving is there though no failed call is followed directly by its half."""
    rows = [32, 32, 32, 4, 16, 16, 16, 2, 16, 16, 16, 2]
    calls = [{"rows": r, "width": 512, "outcome": "failed"} for r in rows]
    assert oom_evidence(calls, "")["halved"] is True
    # the same sizes at another width, or a batch that only ever shrank by more than half, are not halves
    assert (
        oom_evidence(
            [{"rows": 32, "width": 512, "outcome": "failed"}, {"rows": 16, "width": 256, "outcome": "ok"}], ""
        )["halved"]
        is False
    )
    assert (
        oom_evidence(
            [{"rows": 32, "width": 512, "outcome": "failed"}, {"rows": 4, "width": 512, "outcome": "ok"}], ""
        )["halved"]
        is False
    )
