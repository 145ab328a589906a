"""The gateway over two real tritonservers on loopback (the same repository, other ports): batches reach both;
one SIGKILLed under load costs no request and sends none to the local fallback while the other is alive; once
restarted it takes batches again. And a list naming a dead port is served entirely by the live Triton."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from triton_gateway_harness import READY_TIMEOUT_S, Gateway, free_ports, metric_value, running_triton

from export.triton_local import TritonInstall, TritonServer
from gateway.api.schemas import RerankResponse

pytestmark = [pytest.mark.slow, pytest.mark.triton, pytest.mark.real_models]

CALLS = "reranker_triton_endpoint_calls_total"
FALLBACKS = "reranker_fallbacks_total"
FAILURES = "reranker_triton_endpoint_failures_total"
CLIENTS = 8
RECOVERY_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def second_triton(
    triton_install: TritonInstall, triton_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    with running_triton(triton_install, triton_repository, tmp_path_factory.mktemp("triton-b-log")) as server:
        yield server


class Load:
    """`CLIENTS` closed-loop clients on /rerank until stopped; every status and backend is kept."""

    def __init__(self, gateway: Gateway, query: str, documents: list[str]) -> None:
        self.gateway = gateway
        self.query = query
        self.documents = documents
        self.results: list[tuple[int, str]] = []  # (status, backend or error text)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)
        ]

    def _client(self, index: int) -> None:
        with httpx.Client(timeout=60) as client:
            n = 0
            while not self._stop.is_set() and n < 2000:
                n += 1
                documents = [f"{d} (client {index}, request {n})" for d in self.documents]
                try:
                    response = client.post(
                        f"{self.gateway.url}/rerank", json={"query": self.query, "documents": documents}
                    )
                    outcome = (
                        (200, RerankResponse.model_validate(response.json()).backend)
                        if response.status_code == 200
                        else (response.status_code, response.text[:200])
                    )
                except httpx.HTTPError as exc:
                    outcome = (-1, repr(exc))
                with self._lock:
                    self.results.append(outcome)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)

    def count(self) -> int:
        with self._lock:
            return len(self.results)

    def wait_for(self, requests: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.count() < requests and time.monotonic() < deadline:
            time.sleep(0.05)


def _metrics(gateway: Gateway) -> str:
    return httpx.get(f"{gateway.url}/metrics", timeout=10).text


def _endpoints(gateway: Gateway) -> dict[str, dict]:
    info = httpx.get(f"{gateway.url}/info", timeout=10).json()
    pool = info["models"]["reranker"]["scorer"]["primary"]
    return {e["endpoint"]: e for e in pool["endpoints"]}


def test_two_tritons_share_the_load_and_survive_losing_one(
    triton_server: TritonServer, second_triton: TritonServer, gateway_factory, pairs
) -> None:
    a, b = triton_server.grpc_url, second_triton.grpc_url
    gateway = gateway_factory(triton_url=f"{a},{b}", max_in_flight=64, fallback_reprobe_s=0.5)
    query, documents = pairs

    # 1. Both serve.
    start = {e: metric_value(_metrics(gateway), CALLS, endpoint=e, outcome="ok") for e in (a, b)}
    with Load(gateway, query, documents) as load:
        load.wait_for(40)
    assert load.results and all(r == (200, "triton-grpc") for r in load.results), load.results[:5]
    text = _metrics(gateway)
    served = {e: metric_value(text, CALLS, endpoint=e, outcome="ok") - start[e] for e in (a, b)}
    print(f"\nbefore the kill: {len(load.results)} requests, batches per endpoint {served}")
    assert all(n > 0 for n in served.values()), served
    fallbacks_before = metric_value(text, FALLBACKS)

    # 2. b is SIGKILLed under load: every request answered, all by Triton (a).
    before_kill = _metrics(gateway)
    try:
        with Load(gateway, query, documents) as load:
            load.wait_for(20)
            at_kill = load.count()
            assert second_triton.process is not None
            os.killpg(second_triton.process.pid, signal.SIGKILL)
            load.wait_for(at_kill + 60)
        during = load.results
        text = _metrics(gateway)
        failures_b = metric_value(text, FAILURES, endpoint=b) - metric_value(
            before_kill, FAILURES, endpoint=b
        )
        states = {e: s["state"] for e, s in _endpoints(gateway).items()}
    finally:
        second_triton.stop()
        second_triton.start()
    print(
        f"\nkill: {len(during)} requests ({len(during) - at_kill} after the kill), "
        f"{sum(r[0] != 200 for r in during)} failed, {sum(r[1] != 'triton-grpc' for r in during)} not "
        f"from Triton; calls on b that failed: {failures_b:.0f}; states after: {states}"
    )
    assert [r for r in during if r != (200, "triton-grpc")] == [], "no failure, no local fallback"
    assert len(during) >= at_kill + 60
    assert failures_b >= 1, "the kill must have cost b at least one call, or it tested nothing"
    assert states == {a: "up", b: "out"}
    assert metric_value(text, FALLBACKS) == fallbacks_before

    # 3. b restarted (same ports): re-probed, and both serve again.
    second_triton.wait_ready(READY_TIMEOUT_S)
    before_b = metric_value(_metrics(gateway), CALLS, endpoint=b, outcome="ok")
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    with Load(gateway, query, documents) as load:
        while time.monotonic() < deadline:
            if metric_value(_metrics(gateway), CALLS, endpoint=b, outcome="ok") > before_b + 5:
                break
            time.sleep(0.25)
    after = _metrics(gateway)
    totals = {e: metric_value(after, CALLS, endpoint=e, outcome="ok") - start[e] for e in (a, b)}
    print(
        f"batches per endpoint (ok, whole test): {totals}; b after its restart: {totals[b] + start[b] - before_b:.0f}"
    )
    assert totals[b] > before_b + 5, "b takes batches again after its restart"
    assert all(r == (200, "triton-grpc") for r in load.results), load.results[:5]
    assert {e: s["state"] for e, s in _endpoints(gateway).items()} == {a: "up", b: "up"}


def test_a_dead_endpoint_in_the_list_costs_nothing(
    triton_server: TritonServer, gateway_factory, pairs
) -> None:
    (dead,) = free_ports(1)
    dead_url = f"127.0.0.1:{dead}"
    gateway = gateway_factory(triton_url=f"{triton_server.grpc_url},{dead_url}", fallback_reprobe_s=0.5)
    query, documents = pairs
    text = _metrics(gateway)
    live_before = metric_value(text, CALLS, endpoint=triton_server.grpc_url, outcome="ok")
    fallbacks_before = metric_value(text, FALLBACKS)
    backends = []
    for i in range(12):
        response = httpx.post(
            f"{gateway.url}/rerank", json={"query": query, "documents": documents[i % 5 :]}, timeout=60
        )
        assert response.status_code == 200, response.text
        backends.append(RerankResponse.model_validate(response.json()).backend)
    assert backends == ["triton-grpc"] * 12
    text = _metrics(gateway)
    assert metric_value(text, CALLS, endpoint=triton_server.grpc_url, outcome="ok") - live_before >= 12
    assert metric_value(text, CALLS, endpoint=dead_url, outcome="ok") == 0
    assert metric_value(text, FALLBACKS) == fallbacks_before, "the local fallback scored nothing"
    assert _endpoints(gateway)[dead_url]["state"] == "out"
    assert httpx.get(f"{gateway.url}/ready", timeout=10).status_code == 200
