"""Several models in one service under load, against a real uvicorn server: a slow model's flood neither
starves a fast model (the CPU lane's weighted fair queuing serves the fast model's batches next, measured by
the lane's counters, not by milliseconds) nor gets a 504 (admission prices each model's work at its own
measured speed and refuses what cannot finish before the model's deadline at once: 429 + Retry-After)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import ThreadServer

from gateway.app import create_app
from gateway.backends.onnx_local import make_session
from gateway.config import Settings

pytestmark = pytest.mark.slow

SLOW_S_PER_TOKEN = 0.0025  # the slow model holds the lane this long per real token (a 60-token pair: 0.15 s)
SLOW_TIMEOUT_S = 6.0
FLOOD_CLIENTS = 6
FLOOD_S = 10.0
QUERY = "how do rivers carry sediment to the sea"
SMALL = ["Rivers carry silt.", "A railway timetable.", "Deltas form where rivers slow."]
HEAVY = [  # about 60 tokens a pair: 0.15 s a batch, 1.8 s a request; 6 clients queue more than a deadline holds
    f"{i} rivers carry sand, silt and clay downstream toward the coast, where the current slows and the "
    "sediment settles into deltas, marshes and bars that storms and tides later move along the shore again"
    for i in range(12)
]


class PacedSession:
    """A real ONNX Runtime session that also holds its thread for every real token of a batch: a model that
    costs 10-100x more than the tiny one beside it, deterministically."""

    def __init__(self, path: Path, threads: int) -> None:
        self._inner = make_session(path, device="cpu", threads=threads)

    def run(self, output_names: Any, feed: dict[str, Any]) -> Any:
        time.sleep(SLOW_S_PER_TOKEN * int(np.asarray(feed["attention_mask"]).sum()))
        return self._inner.run(output_names, feed)

    def get_inputs(self) -> Any:
        return self._inner.get_inputs()

    def get_outputs(self) -> Any:
        return self._inner.get_outputs()

    def get_providers(self) -> list[str]:
        return self._inner.get_providers()


def sessions(path: Path, *, device: str, threads: int) -> Any:
    if path.parent.parent.name == "reranker":  # <repository>/reranker/1/model.*.onnx: the slow one
        return PacedSession(path, threads)
    return make_session(path, device=device, threads=threads)


def metric(text: str, name: str, model: str) -> float:
    found = re.search(rf'^{name}\{{model="{model}"\}} (\S+)$', text, re.M)
    return float(found[1]) if found else 0.0


def test_a_slow_models_flood_neither_starves_the_fast_one_nor_answers_504(tiny_model_repository, tmp_path):
    models_file = tmp_path / "models.toml"
    models_file.write_text(
        f"""
[models.prefilter]
aliases = ["fast"]

[models.reranker]
aliases = ["slow"]
request_timeout_s = {SLOW_TIMEOUT_S}
max_in_flight = 8
"""
    )
    settings = Settings(
        model_repository=tiny_model_repository,
        models_file=models_file,
        prefilter_name="",
        cache_size=0,
        threads=1,
        device="cpu",
    )
    app = create_app(settings, cpu_session_factory=sessions)
    slow_answers: list[tuple[int, float, str | None]] = []
    fast_answers: list[
        tuple[int, float, float]
    ] = []  # status, slow batches while it ran, slow queue at start
    stop = threading.Event()
    with ThreadServer(app) as server:
        url = server.url

        def flood() -> None:
            with httpx.Client(base_url=url, timeout=60) as client:
                while not stop.is_set():
                    started = time.monotonic()
                    r = client.post("/rerank", json={"model": "slow", "query": QUERY, "documents": HEAVY})
                    slow_answers.append(
                        (r.status_code, time.monotonic() - started, r.headers.get("retry-after"))
                    )
                    if r.status_code == 429:  # a well-behaved client waits as told (bounded here)
                        stop.wait(min(float(r.headers["retry-after"]), 1.0))

        flooders = [threading.Thread(target=flood) for _ in range(FLOOD_CLIENTS)]
        for t in flooders:
            t.start()
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                deadline = time.monotonic() + FLOOD_S
                while time.monotonic() < deadline:
                    before = client.get("/metrics").text
                    queued = metric(before, "reranker_lane_queued_batches", "reranker")
                    ran = metric(before, "reranker_lane_batches_total", "reranker")
                    r = client.post("/rerank", json={"model": "fast", "query": QUERY, "documents": SMALL})
                    after = client.get("/metrics").text
                    ran_during = metric(after, "reranker_lane_batches_total", "reranker") - ran
                    fast_answers.append((r.status_code, ran_during, queued))
                    time.sleep(0.1)
        finally:
            stop.set()
            for t in flooders:
                t.join(90)
        metrics = httpx.get(url + "/metrics").text

    assert fast_answers and all(status == 200 for status, _, _ in fast_answers), fast_answers
    # While the slow model had batches waiting, a fast request waited for the batch running, not the queue:
    # a FIFO lane would have run every queued slow batch first.
    busy = [(ran, queued) for _, ran, queued in fast_answers if queued >= 4]
    assert len(busy) >= 3, f"the slow model's queue was never long: {fast_answers}"
    assert all(ran < queued for ran, queued in busy), busy  # never behind the whole queue
    assert sorted(ran for ran, _ in busy)[len(busy) // 2] <= 2, (
        busy
    )  # typically behind the running batch only
    assert sum(ran for ran, _ in busy) < sum(queued for _, queued in busy) / 2, busy

    statuses = [status for status, _, _ in slow_answers]
    assert set(statuses) <= {200, 429}, statuses  # overload is refused at once: never a 504
    assert statuses.count(200) >= 1 and statuses.count(429) >= 1, statuses
    refused = [(seconds, retry) for status, seconds, retry in slow_answers if status == 429]
    assert all(retry is not None and int(retry) >= 1 for _, retry in refused)
    assert max(seconds for seconds, _ in refused) < SLOW_TIMEOUT_S / 2  # answered without waiting in a queue

    # /metrics tells the two models apart
    for model in ("reranker", "prefilter"):
        assert metric(metrics, "reranker_lane_busy_seconds_total", model) > 0
        assert (
            f'reranker_requests_total{{method="POST",model="{model}",route="/rerank",status="200"}}'
            in metrics
        )
    assert 'reranker_rejected_requests_total{model="reranker",reason="overloaded"}' in metrics
    assert 'reranker_rejected_requests_total{model="prefilter",reason="overloaded"}' not in metrics
