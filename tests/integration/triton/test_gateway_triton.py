"""The gateway with the Triton backend, against the real tritonserver: Triton scores, a stopped Triton is
replaced by the local ONNX Runtime fallback without an error, and a restarted Triton takes the traffic back
(readiness re-probe, no gateway restart). Calls and fallbacks show in /metrics."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import httpx
import pytest
from triton_gateway_harness import Gateway, metric_value

from export.triton_local import TritonServer
from gateway.api.schemas import RerankResponse

pytestmark = [pytest.mark.slow, pytest.mark.triton, pytest.mark.real_models]

RECOVERY_TIMEOUT_S = 60.0


def _rerank(gateway: Gateway, query: str, documents: list[str]) -> RerankResponse:
    response = httpx.post(f"{gateway.url}/rerank", json={"query": query, "documents": documents}, timeout=60)
    assert response.status_code == 200, response.text
    return RerankResponse.model_validate(response.json())


def _assert_ranked(result: RerankResponse) -> None:
    # DOCUMENTS: 0 and 2 answer the query, 1 and 3 are off topic.
    order = [r.index for r in result.results]
    assert set(order[:2]) == {0, 2}, order


def test_triton_fallback_and_recovery(
    triton_server: TritonServer, triton_stopped, gateway_factory, pairs
) -> None:
    query, documents = pairs
    gateway = gateway_factory(triton_url=triton_server.grpc_url, triton_protocol="grpc")
    assert httpx.get(f"{gateway.url}/ready", timeout=10).status_code == 200

    first = _rerank(gateway, query, documents)
    assert first.backend == "triton-grpc"
    _assert_ranked(first)

    with triton_stopped():
        assert not triton_server.is_ready()
        during = [_rerank(gateway, query, documents[i:] + documents[:i]) for i in range(3)]
        assert all(result.backend == "onnx-cpu" for result in during), [r.backend for r in during]
        _assert_ranked(_rerank(gateway, query, documents))
        assert httpx.get(f"{gateway.url}/ready", timeout=10).status_code == 200

    # Triton is back (same ports): the gateway re-probes readiness and uses it again.
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    backends = []
    while time.monotonic() < deadline:
        backends.append(_rerank(gateway, query, documents).backend)
        if backends[-1] == "triton-grpc":
            break
        time.sleep(0.5)
    assert backends[-1] == "triton-grpc", backends

    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    calls = "reranker_scorer_calls_total"
    assert metric_value(metrics, calls, backend="triton-grpc", protocol="grpc", outcome="ok") >= 2
    assert metric_value(metrics, calls, backend="triton-grpc", protocol="grpc", outcome="unavailable") >= 1
    fallbacks = metric_value(
        metrics, "reranker_fallbacks_total", from_backend="triton-grpc", to_backend="onnx-cpu"
    )
    assert fallbacks >= 4


def test_gateway_over_http_protocol(triton_server: TritonServer, gateway_factory, pairs) -> None:
    query, documents = pairs
    gateway = gateway_factory(triton_url=triton_server.http_url, triton_protocol="http")
    result = _rerank(gateway, query, documents)
    assert result.backend == "triton-http"
    _assert_ranked(result)


def _burst(
    gateway: Gateway, bodies: list[dict[str, object]], during: Callable[[], None] | None = None
) -> list[int]:
    """Send every body at once (one thread each); `during` runs while they are in flight. Statuses back."""
    statuses: list[int] = [0] * len(bodies)

    def send(i: int) -> None:
        try:
            statuses[i] = httpx.post(f"{gateway.url}/rerank", json=bodies[i], timeout=120).status_code
        except httpx.HTTPError:
            statuses[i] = -1

    threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    if during is not None:
        during()
    for thread in threads:
        thread.join(150)
    return statuses


def _bodies(pairs: tuple[str, list[str]], count: int, documents: int) -> list[dict[str, object]]:
    query, docs = pairs
    return [
        {"query": query, "documents": [f"{docs[d % len(docs)]} (note {r}-{d})" for d in range(documents)]}
        for r in range(count)
    ]


def test_a_timed_out_triton_call_does_not_fail_its_siblings(
    triton_server: TritonServer, gateway_factory, pairs
) -> None:
    """The issue's reproduction: 1 s Triton timeout, 32 concurrent requests of 24 documents on one gRPC
    channel. One call times out; before the fix closing the channel cancelled the others (500s)."""
    gateway = gateway_factory(
        triton_url=triton_server.grpc_url, triton_protocol="grpc", triton_timeout_s=1.0, max_in_flight=64
    )
    statuses = _burst(gateway, _bodies(pairs, 32, 24))
    assert statuses == [200] * 32, statuses
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    timeouts = metric_value(
        metrics, "reranker_scorer_calls_total", backend="triton-grpc", protocol="grpc", outcome="timeout"
    )
    assert timeouts >= 1, "the burst must have made a Triton call time out, or it tested nothing"


def test_requests_in_flight_when_triton_is_killed_are_served_by_the_fallback(
    triton_server: TritonServer, gateway_factory, pairs
) -> None:
    gateway = gateway_factory(triton_url=triton_server.grpc_url, triton_protocol="grpc", max_in_flight=64)
    assert _rerank(gateway, *pairs).backend == "triton-grpc"
    before = httpx.get(f"{gateway.url}/metrics", timeout=10).text

    def kill() -> None:
        time.sleep(0.5)  # the requests are queued in Triton by now
        assert triton_server.process is not None
        os.killpg(triton_server.process.pid, signal.SIGKILL)

    try:
        statuses = _burst(gateway, _bodies(pairs, 16, 24), during=kill)
    finally:
        triton_server.stop()
        triton_server.start()
        triton_server.wait_ready(120)
    assert statuses == [200] * 16, statuses
    after = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    name, labels = "reranker_fallbacks_total", {"from_backend": "triton-grpc", "to_backend": "onnx-cpu"}
    assert metric_value(after, name, **labels) > metric_value(before, name, **labels), (
        "the fallback served the burst"
    )
