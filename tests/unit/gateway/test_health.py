"""The one health state machine (gateway/backends/health.py): mark down, re-probe when due, bounded probes,
the metrics hook, and the nested probe bounds of a fallback over a Triton pool."""

from __future__ import annotations

import asyncio

import numpy as np

from gateway.backends.base import BatchScores, EncodedBatch
from gateway.backends.fallback import MarkDownFallback
from gateway.backends.health import ENDPOINT_PROBE_TIMEOUT_S, PRIMARY_PROBE_TIMEOUT_S, Health
from gateway.backends.triton_pool import TritonPool


class Backend:
    """`ready()` answers `answer`, after `delay` seconds; counts the calls."""

    def __init__(self, answer: bool = True, delay: float = 0.0) -> None:
        self.answer = answer
        self.delay = delay
        self.asked = 0

    async def ready(self) -> bool:
        self.asked += 1
        await asyncio.sleep(self.delay)
        return self.answer


def test_a_backend_marked_down_is_probed_once_per_interval_and_comes_back():
    async def run() -> None:
        now = [0.0]
        backend, changes = Backend(answer=False), []
        health = Health("b", backend.ready, reprobe_s=5.0, clock=lambda: now[0], on_change=changes.append)
        health.mark_down("unavailable: refused")
        assert not health.up and health.last_error == "unavailable: refused"
        health.maybe_reprobe()
        await asyncio.sleep(0.01)
        assert backend.asked == 0  # not due yet
        now[0] = 5.0
        health.maybe_reprobe()
        health.maybe_reprobe()  # one probe at a time
        await asyncio.sleep(0.01)
        assert backend.asked == 1 and not health.up
        assert health.next_probe == 10.0  # a failed probe waits another interval
        backend.answer = True
        now[0] = 10.0
        health.maybe_reprobe()
        await asyncio.sleep(0.01)
        assert backend.asked == 2 and health.up
        assert changes == [False, True]  # the hook sees each flip once

    asyncio.run(run())


def test_a_hanging_probe_is_bounded_and_keeps_the_backend_down():
    async def run() -> tuple[bool, Health]:
        health = Health("slow", Backend(delay=10.0).ready, probe_timeout_s=0.05)
        health.mark_down("timeout")
        return await asyncio.wait_for(health.probe(), 1.0), health

    ok, health = asyncio.run(run())
    assert ok is False and not health.up
    assert health.last_error == "probe: TimeoutError"


def test_a_probe_that_answers_not_ready_takes_an_up_backend_down():
    health = Health("b", Backend(answer=False).ready)
    assert asyncio.run(health.probe()) is False
    assert not health.up and health.last_error == "probe: not ready"


def test_check_reports_without_changing_state():
    health = Health("b", Backend(answer=False).ready)
    assert asyncio.run(health.check()) is False
    assert health.up


class Endpoint:
    def __init__(self, delay: float) -> None:
        self.name = "triton-grpc"
        self.input_names = ("input_ids",)
        self.max_batch_size = None
        self.delay = delay

    async def score(self, batch: EncodedBatch) -> BatchScores:
        return BatchScores(np.zeros(batch.size, dtype=np.float32), self.name)

    async def ready(self) -> bool:
        await asyncio.sleep(self.delay)
        return True

    async def close(self) -> None:
        return None


class Unready(Endpoint):
    async def ready(self) -> bool:
        return False


def test_the_pool_bound_is_inside_the_fallback_bound_so_one_slow_endpoint_hides_nothing():
    """The fallback bounds the pool's ready(), which waits for every endpoint's own (shorter) bound."""
    assert ENDPOINT_PROBE_TIMEOUT_S < PRIMARY_PROBE_TIMEOUT_S
    endpoints = {"10.0.0.1:8001": Endpoint(delay=60.0), "10.0.0.2:8001": Endpoint(delay=0.0)}
    pool = TritonPool(list(endpoints), endpoints.__getitem__, name="triton-grpc", input_names=("input_ids",))
    scorer = MarkDownFallback(pool, Unready(delay=0.0))

    async def run() -> tuple[bool, list[bool]]:
        try:
            return await asyncio.wait_for(scorer.ready(), 10), [e.up for e in pool.endpoints]
        finally:
            await scorer.close()

    ready, up = asyncio.run(run())
    assert ready is True, "the ready endpoint's answer reached the fallback in time"
    assert up == [False, True]
