"""Calls in flight when a Triton channel fails: none of them may end the request.

Closing a grpc.aio channel cancels every call still running on it. Before the fix, one timed-out call closed
the shared channel and every sibling call raised `CancelledError`, which escaped the fallback and answered
500. A fake client with grpc.aio's closing behaviour stands in for the library here; the real server is
driven the same way in tests/integration/triton/test_triton_failures.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from gateway.backends.base import BatchScores, EncodedBatch
from gateway.backends.fallback import MarkDownFallback
from gateway.backends.triton import TritonScorer
from gateway.errors import BackendFailed

NAMES = ("input_ids", "attention_mask", "token_type_ids")


def batch(rows: int) -> EncodedBatch:
    return EncodedBatch({name: np.ones((rows, 6), dtype=np.int64) for name in NAMES})


class FakeResult:
    def __init__(self, logits: np.ndarray) -> None:
        self.logits = logits

    def as_numpy(self, name: str) -> np.ndarray:
        return self.logits


class ChannelClient:
    """Like a grpc.aio client of a server that serves our model, and like its channel, `close()` cancels
    every call in flight. The first `hang_first` inferences never get an answer; the others wait until
    `gate` opens."""

    def __init__(self, *, hang_first: int = 0) -> None:
        self.hang_first = hang_first
        self.closed = False
        self.gate = asyncio.Event()
        self.in_flight: set[asyncio.Future[None]] = set()
        self.calls = 0

    async def get_model_metadata(self, model_name, model_version="", **kwargs):
        return {
            "inputs": [{"name": n, "datatype": "INT64"} for n in NAMES],
            "outputs": [{"name": "logits", "datatype": "FP32"}],
        }

    async def get_model_config(self, model_name, model_version="", **kwargs):
        return {"config": {"max_batch_size": 64}}

    async def is_server_ready(self, **kwargs):
        return True

    async def is_model_ready(self, model_name, model_version="", **kwargs):
        return True

    async def infer(self, model_name, inputs, **kwargs):
        self.calls += 1
        hang = self.calls <= self.hang_first
        waiter = asyncio.get_running_loop().create_future()
        self.in_flight.add(waiter)
        try:
            if hang:
                await waiter  # answered never; cancelled by close()
            else:
                await asyncio.wait(
                    {waiter, asyncio.ensure_future(self.gate.wait())}, return_when="FIRST_COMPLETED"
                )
                if waiter.cancelled():
                    raise asyncio.CancelledError
        finally:
            self.in_flight.discard(waiter)
        rows = inputs[0].shape()[0]
        return FakeResult(np.full((rows, 1), 1.0, dtype=np.float32))

    def cancel_all(self) -> None:
        for waiter in list(self.in_flight):
            waiter.cancel()

    async def close(self):
        self.closed = True
        self.cancel_all()


class ConstantScorer:
    """A fallback that always answers (logit 0)."""

    name = "onnx-cpu"
    input_names = NAMES
    max_batch_size = None

    def __init__(self) -> None:
        self.batches = 0

    async def score(self, work: EncodedBatch) -> BatchScores:
        self.batches += 1
        return BatchScores(logits=np.zeros(work.size, dtype=np.float32), backend=self.name)

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        return None


async def until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Wait for `condition` (polled every millisecond): an event, not a guess at how long it takes."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout_s)


def triton_with(client: ChannelClient, timeout_s: float) -> TritonScorer:
    scorer = TritonScorer("127.0.0.1:1", "grpc", "reranker", NAMES, timeout_s=timeout_s)
    scorer._new_client = lambda: client  # type: ignore[method-assign]
    return scorer


def test_a_timed_out_call_does_not_cancel_its_siblings_on_the_channel() -> None:
    timeout_s = 2.0
    stagger_s = 1.0  # the siblings start this much later, so their deadlines fall 1 s after the first's

    async def run() -> list[object]:
        client = ChannelClient(hang_first=1)
        scorer = triton_with(client, timeout_s=timeout_s)
        await scorer.ready()  # metadata checked: the first infer below is the hung one
        calls = [asyncio.ensure_future(scorer.score(batch(2)))]
        await until(lambda: client.calls == 1)
        await asyncio.sleep(stagger_s)
        calls += [asyncio.ensure_future(scorer.score(batch(2))) for _ in range(7)]
        await until(lambda: len(client.in_flight) == 8)
        # the first call times out (at 2 s); its siblings (deadlines about 1 s later) are still waiting
        await asyncio.wait({calls[0]}, timeout=timeout_s + 30)
        assert calls[0].done() and not any(call.done() for call in calls[1:])
        assert not client.closed, "a channel with calls in flight is not closed"
        client.gate.set()
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
        assert client.closed, "the failed channel is closed once its last call has ended"
        return results

    results = asyncio.run(run())
    assert isinstance(results[0], BackendFailed) and results[0].reason == "timeout", results[0]
    assert all(isinstance(r, BatchScores) and r.backend == "triton-grpc" for r in results[1:]), results


def test_calls_the_client_library_cancels_are_served_by_the_fallback() -> None:
    async def run() -> tuple[list[object], ConstantScorer]:
        client = ChannelClient()
        fallback = ConstantScorer()
        scorer = MarkDownFallback(triton_with(client, timeout_s=5), fallback, reprobe_s=60)
        await scorer.ready()
        calls = [asyncio.ensure_future(scorer.score(batch(3))) for _ in range(8)]
        await until(lambda: len(client.in_flight) == 8)
        client.cancel_all()  # the channel went away under every call at once
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5), fallback

    results, fallback = asyncio.run(run())
    assert all(isinstance(r, BatchScores) and r.backend == "onnx-cpu" for r in results), results
    assert fallback.batches == 8


def test_the_callers_own_cancellation_still_stops_the_work() -> None:
    async def run() -> ConstantScorer:
        client = ChannelClient()
        fallback = ConstantScorer()
        scorer = MarkDownFallback(triton_with(client, timeout_s=5), fallback, reprobe_s=60)
        await scorer.ready()
        call = asyncio.ensure_future(scorer.score(batch(3)))
        await asyncio.sleep(0.1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return fallback

    assert asyncio.run(run()).batches == 0, "a cancelled request is not scored by the fallback"
