"""The Triton pool's own rules, with in-process stand-ins for the endpoints' scorers: balancing, taking a
failing endpoint out and re-probing it, DNS re-resolution, the fallback only when every endpoint failed.
The same behaviour against two real tritonservers: tests/integration/triton/test_two_tritons.py."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway import metrics
from gateway.backends.base import BatchScores, EncodedBatch
from gateway.backends.fallback import MarkDownFallback
from gateway.backends.triton_pool import TritonPool
from gateway.config import ConfigurationError, load_settings
from gateway.errors import BackendFailed


class Endpoint:
    """Scores every row with its own number; `gate` (when set) holds calls until opened."""

    def __init__(self, address: str, value: float) -> None:
        self.address = address
        self.name = "triton-grpc"
        self.input_names = ("input_ids",)
        self.max_batch_size = None
        self.value = value
        self.calls: list[int] = []
        self.failing: str | None = None  # a BackendFailed reason while set
        self.is_ready = True
        self.gate: asyncio.Event | None = None
        self.closed = False

    async def score(self, batch: EncodedBatch) -> BatchScores:
        self.calls.append(batch.size)
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise BackendFailed(f"{self.address} failed", reason=self.failing)
        return BatchScores(np.full(batch.size, self.value, dtype=np.float32), "triton-grpc")

    async def ready(self) -> bool:
        return self.is_ready

    async def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def batch(rows: int) -> EncodedBatch:
    return EncodedBatch({"input_ids": np.ones((rows, 4), dtype=np.int64)})


def make_pool(entries, *, balance="least_outstanding", resolver=None, clock=None):
    built: dict[str, Endpoint] = {}

    def connect(address: str) -> Endpoint:
        built[address] = Endpoint(address, value=float(len(built) + 1))
        return built[address]

    kwargs = {"resolver": resolver} if resolver else {}
    pool = TritonPool(
        entries,
        connect,
        name="triton-grpc",
        input_names=("input_ids",),
        balance=balance,
        reprobe_s=5.0,
        clock=clock or Clock(),
        **kwargs,
    )
    return pool, built


def counter(metric, *labels: str) -> float:
    return metric.labels(*labels)._value.get()


def test_round_robin_alternates_over_the_endpoints():
    pool, built = make_pool(["10.0.0.1:8001", "10.0.0.2:8001"], balance="round_robin")

    async def run() -> None:
        for _ in range(6):
            await pool.score(batch(2))

    asyncio.run(run())
    assert [len(e.calls) for e in built.values()] == [3, 3]


@pytest.mark.parametrize(("balance", "third_goes_to"), [("least_outstanding", "b"), ("round_robin", "a")])
def test_least_outstanding_avoids_the_endpoint_still_busy(balance: str, third_goes_to: str):
    pool, built = make_pool(["10.0.0.1:8001", "10.0.0.2:8001"], balance=balance)
    a, b = built["10.0.0.1:8001"], built["10.0.0.2:8001"]

    async def run() -> None:
        a.gate = asyncio.Event()  # a holds its big batch
        big = asyncio.create_task(pool.score(batch(32)))
        await asyncio.sleep(0)
        assert a.calls == [32] and not b.calls
        await pool.score(batch(2))  # b is idle: it takes this one whatever the rule
        third = asyncio.create_task(pool.score(batch(2)))  # a still has 32 rows in flight
        await asyncio.sleep(0)
        a.gate.set()
        await asyncio.gather(big, third)

    asyncio.run(run())
    assert {"a": a, "b": b}[third_goes_to].calls[-1] == 2
    assert all(e.in_flight == 0 for e in pool.endpoints)


def test_a_failing_endpoint_is_taken_out_and_its_batch_served_by_another():
    clock = Clock()
    pool, built = make_pool(["10.0.0.1:8001", "10.0.0.2:8001"], balance="round_robin", clock=clock)
    a, b = built["10.0.0.1:8001"], built["10.0.0.2:8001"]
    a.failing = "unavailable"
    a.is_ready = False
    failures_before = counter(metrics.TRITON_ENDPOINT_FAILURES, a.address, "unavailable")

    async def run() -> list[BatchScores]:
        return [await pool.score(batch(3)) for _ in range(4)]

    results = asyncio.run(run())
    assert all(r.logits.tolist() == [2.0] * 3 for r in results), "every batch answered by b"
    assert len(a.calls) == 1, "a is out after its first failure: no batch waits on it again"
    assert len(b.calls) == 4
    assert counter(metrics.TRITON_ENDPOINT_FAILURES, a.address, "unavailable") == failures_before + 1
    assert counter(metrics.TRITON_ENDPOINT_UP, a.address) == 0
    states = {e["endpoint"]: e["state"] for e in pool.info()["endpoints"]}
    assert states == {a.address: "out", b.address: "up"}

    # Re-probed every reprobe_s: not ready yet, then ready: it takes batches again.
    async def later(ready: bool) -> None:
        a.is_ready, a.failing = ready, None if ready else "unavailable"
        clock.now += 5.0
        await pool.score(batch(1))
        await asyncio.sleep(0.01)  # the background probe
        for _ in range(4):
            await pool.score(batch(1))

    asyncio.run(later(False))
    assert len(a.calls) == 1
    asyncio.run(later(True))
    assert len(a.calls) >= 2 and counter(metrics.TRITON_ENDPOINT_UP, a.address) == 1


def test_a_batch_error_is_retried_elsewhere_but_keeps_the_endpoint_in():
    pool, built = make_pool(["10.0.0.1:8001", "10.0.0.2:8001"], balance="round_robin")
    a, b = built["10.0.0.1:8001"], built["10.0.0.2:8001"]
    a.failing = "error"  # the server answered with an error: not a reason to distrust the server
    out = asyncio.run(pool.score(batch(2)))
    assert out.logits.tolist() == [2.0, 2.0] and a.calls == [2] and b.calls == [2]
    assert all(e.up for e in pool.endpoints)


def test_local_fallback_only_when_every_endpoint_failed():
    pool, built = make_pool(["10.0.0.1:8001", "10.0.0.2:8001"])
    local = Endpoint("local", value=-1.0)
    local.name = "onnx-cpu"
    scorer = MarkDownFallback(pool, local, reprobe_s=5.0)
    built["10.0.0.1:8001"].failing = "unavailable"
    assert asyncio.run(scorer.score(batch(2))).logits.tolist() == [2.0, 2.0]
    assert local.calls == []
    built["10.0.0.2:8001"].failing = "timeout"
    with pytest.raises(BackendFailed, match="no Triton endpoint") as raised:
        asyncio.run(pool.score(batch(2)))
    assert raised.value.reason in ("unavailable", "timeout")
    out = asyncio.run(scorer.score(batch(2)))
    assert out.logits.tolist() == [-1.0, -1.0] and local.calls == [2]


def test_ready_probes_every_endpoint_and_sets_their_states():
    pool, built = make_pool(["10.0.0.1:8001", "10.0.0.2:8001"])
    built["10.0.0.1:8001"].is_ready = False
    assert asyncio.run(pool.ready()) is True
    assert [e.up for e in pool.endpoints] == [False, True]
    built["10.0.0.2:8001"].is_ready = False
    assert asyncio.run(pool.ready()) is False
    built["10.0.0.1:8001"].is_ready = True
    assert asyncio.run(pool.ready()) is True
    assert [e.up for e in pool.endpoints] == [True, False]


def test_a_name_stands_for_all_its_addresses_and_is_re_resolved():
    clock = Clock()
    answers = [["10.1.0.1:8001", "10.1.0.2:8001"], ["10.1.0.2:8001", "10.1.0.3:8001"]]
    asked: list[tuple[str, int]] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return answers[min(len(asked), len(answers)) - 1]

    pool, built = make_pool(["triton-headless:8001"], balance="round_robin", resolver=resolver, clock=clock)

    async def run() -> None:
        for _ in range(4):
            await pool.score(batch(1))
        assert sorted(e.address for e in pool.endpoints) == answers[0]
        clock.now += 30.0  # resolve_s
        await pool.score(batch(1))
        await asyncio.sleep(0.01)  # the background re-resolution
        for _ in range(4):
            await pool.score(batch(1))

    asyncio.run(run())
    assert asked == [("triton-headless", 8001), ("triton-headless", 8001)]
    assert sorted(e.address for e in pool.endpoints) == answers[1]
    assert built["10.1.0.1:8001"].closed, "a replica gone from DNS is closed"
    assert built["10.1.0.3:8001"].calls, "a new replica takes batches"
    assert pool.info()["configured"] == ["triton-headless:8001"]


def test_a_name_that_does_not_resolve_is_handed_to_the_client_library():
    async def resolver(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    pool, built = make_pool(["triton:8001"], resolver=resolver)
    asyncio.run(pool.score(batch(1)))
    assert list(built) == ["triton:8001"]


def test_the_callers_cancellation_still_cancels():
    pool, built = make_pool(["10.0.0.1:8001", "10.0.0.2:8001"])
    for endpoint in built.values():
        endpoint.gate = asyncio.Event()

    async def run() -> None:
        task = asyncio.create_task(pool.score(batch(4)))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert sum(len(e.calls) for e in built.values()) == 1, "not retried elsewhere: the request left"
    assert all(e.up and e.in_flight == 0 for e in pool.endpoints)


def test_triton_url_list_form():
    s = load_settings(triton_url=" grpc://10.0.0.1:8001, triton-headless:8001 ,10.0.0.1:8001,[::1]:8001")
    assert s.triton_endpoints == ["10.0.0.1:8001", "triton-headless:8001", "[::1]:8001"]
    assert load_settings(triton_url="").triton_endpoints == []
    for bad in ("triton", "triton:http", "a:8001,b", "::1:8001", ",", "triton:70000"):
        with pytest.raises(ConfigurationError, match="RERANKER_TRITON_URL"):
            load_settings(triton_url=bad)


def test_resolve_lists_ipv4_addresses_once():
    from gateway.backends.triton_pool import resolve

    assert asyncio.run(resolve("127.0.0.1", 8001)) == ["127.0.0.1:8001"]
    found = asyncio.run(resolve("localhost", 8001))
    assert found and len(found) == len(set(found))
    assert all(address.endswith(":8001") for address in found)
    assert "127.0.0.1:8001" in found or all(address.startswith("[") for address in found)
