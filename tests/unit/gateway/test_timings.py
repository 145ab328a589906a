"""Per-phase timings: measured in the pipeline, carried on the outcome, observed in the histograms and
written by the HTTP layer as TEI's `x-*-time` headers."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from gateway.app import create_app
from gateway.backends.onnx_local import FairLane
from gateway.domain import BatchScores, EncodedBatch, RerankQuery

QUERY = "berlin population"
DOCS = ["Berlin has a large population.", "Trains in Spain.", "Berlin population figures."]


def phase_count(phase: str, stage: str, model: str = "reranker") -> float:
    value = REGISTRY.get_sample_value(
        "reranker_phase_duration_seconds_count", {"phase": phase, "stage": stage, "model": model}
    )
    return value or 0.0


def test_lane_reports_how_long_a_batch_waited_for_its_thread():
    """The first batch takes the idle thread; the second waits until the first lets go. Event-based: the
    first holds the thread until the second is queued and then 0.3 s more, so a loaded machine's slow
    thread pick-up cannot make the figures cross."""
    lane = FairLane("test-lane", trim_when_idle=False)
    batch = EncodedBatch({"input_ids": np.zeros((1, 4), dtype=np.int64)})
    running, release = threading.Event(), threading.Event()
    held_s = 0.3

    def holding(_: EncodedBatch) -> np.ndarray:
        running.set()
        release.wait(30)
        return np.zeros(1, dtype=np.float32)

    def quick(_: EncodedBatch) -> np.ndarray:
        return np.zeros(1, dtype=np.float32)

    async def two_at_once():
        first = asyncio.ensure_future(lane.run_timed(holding, batch))
        assert await asyncio.to_thread(running.wait, 30), "the lane never ran the first batch"
        second = asyncio.ensure_future(lane.run_timed(quick, batch))
        while lane.pending < 2:  # the second is submitted (its wait is being measured)
            await asyncio.sleep(0.001)
        await asyncio.sleep(held_s)
        release.set()
        return await asyncio.gather(first, second)

    try:
        (_, first), (_, second) = asyncio.run(two_at_once())
    finally:
        release.set()
        lane.close()
    assert second >= held_s  # the second queued behind the first for at least the time it was held
    assert first < second  # the first found the thread free


def test_pipeline_times_its_phases_and_observes_them(make_reranker):
    reranker, ce, _ = make_reranker(keep=0)
    original = ce.score

    async def slow_score(batch):
        result = await original(batch)
        await asyncio.sleep(0.05)
        return BatchScores(result.logits, result.backend, queued_s=0.02)

    ce.score = slow_score
    before = {p: phase_count(p, "reranker") for p in ("tokenize", "lane_wait", "inference", "assemble")}
    outcome = asyncio.run(reranker.rerank(RerankQuery(QUERY, tuple(DOCS))))
    t = outcome.timings
    assert t.lane_wait == 0.02 and t.inference >= 0.025  # wall time of the scoring call, less the wait
    assert t.tokenize > 0 and t.assemble > 0
    for phase, count in before.items():
        assert phase_count(phase, "reranker") == count + 1, phase
    # A second identical query is answered from the cache: nothing is tokenized or scored.
    again = asyncio.run(reranker.rerank(RerankQuery(QUERY, tuple(DOCS))))
    assert again.timings.tokenize == 0 and again.timings.inference == 0


def test_responses_carry_tei_timing_headers(make_reranker):
    reranker, _, _ = make_reranker(keep=2)
    with TestClient(create_app(reranker.settings, reranker)) as client:
        before = phase_count("inference", "prefilter")
        r = client.post("/rerank", json={"query": QUERY, "documents": DOCS})
        assert r.status_code == 200, r.text
        assert r.json()["stages"] == ["prefilter", "reranker"]
        assert phase_count("inference", "prefilter") == before + 1
        times = {
            h: int(r.headers[h])
            for h in ("x-total-time", "x-tokenization-time", "x-queue-time", "x-inference-time")
        }
        assert all(v >= 0 for v in times.values())
        parts = times["x-tokenization-time"] + times["x-queue-time"] + times["x-inference-time"]
        assert times["x-total-time"] >= parts
        # Every dialect's inference route gets them; ops routes and errors do not.
        v2 = client.post("/v2/rerank", json={"query": QUERY, "documents": DOCS})
        assert v2.status_code == 200 and "x-inference-time" in v2.headers
        tei = client.post("/rerank", json={"query": QUERY, "texts": DOCS})
        assert tei.status_code == 200 and "x-queue-time" in tei.headers
        assert "x-total-time" not in client.get("/health").headers
        bad = client.post("/rerank", json={"query": QUERY, "documents": DOCS, "top_k": -1})
        assert bad.status_code == 422 and "x-inference-time" not in bad.headers
