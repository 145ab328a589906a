"""Admission by queued work and stopped work for clients that left, on a real server (2 cores)."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import PASSAGES, QUERY, RELEVANT, running_gateway

pytestmark = [pytest.mark.slow, pytest.mark.real_models, pytest.mark.clients]


def test_48_concurrent_ten_document_requests_all_succeed(gateway_url, api_key):
    """The old in-flight bound (16) refused a quarter of 20 concurrent clients; now they queue while the
    queued work can finish within the request timeout."""
    headers = {"Authorization": f"Bearer {api_key}"}

    def one(i: int) -> tuple[int, int]:
        docs = [f"{p} (request {i}, copy {c})" for c in range(3) for p in PASSAGES][:10]
        r = httpx.post(
            f"{gateway_url}/v1/rerank", json={"query": QUERY, "documents": docs}, headers=headers, timeout=120
        )
        return r.status_code, (
            r.json()["results"][0]["index"] % len(PASSAGES) if r.status_code == 200 else -1
        )

    with ThreadPoolExecutor(max_workers=48) as pool:
        answers = list(pool.map(one, range(48)))
    assert Counter(status for status, _ in answers) == {200: 48}
    assert all(best == RELEVANT for _, best in answers)


def test_the_work_of_a_client_that_left_is_stopped(real_model_repository, tmp_path, api_key):
    """A 400-document request whose client gives up after 1 s stops computing: a 2-document request right
    after it answers at once instead of waiting behind it, and /metrics counts the cancelled request."""
    headers = {"Authorization": f"Bearer {api_key}"}
    heavy = {"query": QUERY, "documents": [f"{i} " + " ".join(PASSAGES) * 8 for i in range(400)]}
    # a deadline long enough for the heavy request to be admitted (else it is refused at once as too large)
    with running_gateway(
        real_model_repository,
        tmp_path,
        RERANKER_KEEP="0",
        RERANKER_CACHE_SIZE="0",
        RERANKER_REQUEST_TIMEOUT_S="600",
    ) as url:
        small = {"query": QUERY, "documents": PASSAGES[:2]}
        assert httpx.post(f"{url}/v1/rerank", json=small, headers=headers, timeout=60).status_code == 200
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/rerank", json=heavy, headers=headers, timeout=httpx.Timeout(60, read=1.0))
        gave_up = time.monotonic() - started
        started = time.monotonic()
        r = httpx.post(f"{url}/v1/rerank", json=small, headers=headers, timeout=60)
        waited = time.monotonic() - started
        assert r.status_code == 200 and r.json()["results"][0]["index"] == 1
        assert waited < 5.0, f"the 2-document request waited {waited:.1f}s behind abandoned work"
        metrics = ""
        for _ in range(20):  # the cancellation is counted within a poll interval (bounded: 2 s)
            metrics = httpx.get(f"{url}/metrics", timeout=10).text
            if (
                'reranker_cancelled_requests_total{model="reranker",reason="client_disconnected"} 1.0'
                in metrics
            ):
                break
            time.sleep(0.1)
        assert (
            'reranker_cancelled_requests_total{model="reranker",reason="client_disconnected"} 1.0' in metrics
        )
        assert gave_up < 3.0
