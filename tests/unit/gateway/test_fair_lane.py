"""The CPU lane's scheduler: weighted fair queuing of batches across models (gateway/backends/onnx_local.py).
Measured by the order the batches ran in (`FairLane.served`) and the lane's counters, not by milliseconds."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from gateway.backends.onnx_local import FairLane

BATCH = None  # the lane hands the batch to the function untouched; these functions ignore it


def hold(seconds: float):
    def run(_: object) -> np.ndarray:
        time.sleep(seconds)
        return np.zeros(1, dtype=np.float32)

    return run


def gate(started: threading.Event, release: threading.Event):
    def run(_: object) -> np.ndarray:
        started.set()
        release.wait(30)
        return np.zeros(1, dtype=np.float32)

    return run


@pytest.fixture()
def lane():
    lane = FairLane("test-fair-lane", trim_when_idle=False)
    yield lane
    lane.close()


def test_a_burst_waits_behind_the_running_batch_only(lane):
    """The big model has 20 batches queued behind a running one; the small model's 5 batches go next."""
    big, small = lane.share("big"), lane.share("small")
    started, release = threading.Event(), threading.Event()

    async def run():
        first = asyncio.ensure_future(big.run_timed(gate(started, release), BATCH))
        assert await asyncio.to_thread(started.wait, 30)
        queued = [asyncio.ensure_future(big.run_timed(hold(0.01), BATCH)) for _ in range(20)]
        await asyncio.sleep(0.05)
        burst = [asyncio.ensure_future(small.run_timed(hold(0.001), BATCH)) for _ in range(5)]
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.gather(first, *queued, *burst)

    asyncio.run(run())
    order = list(lane.served)
    assert order[0] == "big" and order[1:6] == ["small"] * 5, order[:8]
    assert big.batches == 21 and small.batches == 5


def test_a_fifo_would_have_served_the_burst_last(lane):
    """The same arrival with one model name: the burst waits behind the whole queue (what fair queuing fixes)."""
    one = lane.share("one")
    started, release = threading.Event(), threading.Event()
    marks: list[str] = []

    def tagged(tag: str):
        def run(_: object) -> np.ndarray:
            marks.append(tag)
            return np.zeros(1, dtype=np.float32)

        return run

    async def run():
        first = asyncio.ensure_future(one.run_timed(gate(started, release), BATCH))
        assert await asyncio.to_thread(started.wait, 30)
        queued = [asyncio.ensure_future(one.run_timed(tagged("big"), BATCH)) for _ in range(10)]
        await asyncio.sleep(0.02)
        burst = [asyncio.ensure_future(one.run_timed(tagged("small"), BATCH)) for _ in range(3)]
        await asyncio.sleep(0.02)
        release.set()
        await asyncio.gather(first, *queued, *burst)

    asyncio.run(run())
    assert marks == ["big"] * 10 + ["small"] * 3


def test_busy_models_share_the_lane_by_weight(lane):
    heavy, light = lane.share("heavy", weight=2.0), lane.share("light", weight=1.0)

    async def run():
        jobs = [m.run_timed(hold(0.004), BATCH) for _ in range(30) for m in (heavy, light)]
        await asyncio.gather(*jobs)

    asyncio.run(run())
    first = list(lane.served)[:30]
    assert 16 <= first.count("heavy") <= 24, first  # 2:1 is 20 of 30
    assert heavy.served_s > 0 and light.served_s > 0


def test_a_model_back_from_idle_does_not_starve_the_busy_one(lane):
    """Time spent idle is not saved up: a model that comes back is levelled with the others."""
    old, new = lane.share("old"), lane.share("new")

    async def run():
        await asyncio.gather(*(old.run_timed(hold(0.003), BATCH) for _ in range(20)))
        mark = len(lane.served)
        tasks = [asyncio.ensure_future(new.run_timed(hold(0.003), BATCH)) for _ in range(10)]
        tasks += [asyncio.ensure_future(old.run_timed(hold(0.003), BATCH)) for _ in range(10)]
        await asyncio.gather(*tasks)
        return mark

    mark = asyncio.run(run())
    after = list(lane.served)[mark : mark + 10]
    assert after.count("old") >= 3, after  # without levelling, `new` (60 ms of service behind) takes all 10


def test_a_cancelled_batch_is_dropped_before_it_runs(lane):
    share = lane.share("m")
    started, release = threading.Event(), threading.Event()
    ran: list[int] = []

    def mark(_: object) -> np.ndarray:
        ran.append(1)
        return np.zeros(1, dtype=np.float32)

    async def run():
        first = asyncio.ensure_future(share.run_timed(gate(started, release), BATCH))
        assert await asyncio.to_thread(started.wait, 30)
        doomed = asyncio.ensure_future(share.run_timed(mark, BATCH))
        await asyncio.sleep(0.02)
        doomed.cancel()
        await asyncio.sleep(0.02)
        release.set()
        await first
        await share.run_timed(hold(0.0), BATCH)  # a batch after it: the lane went past the dropped one
        return doomed.cancelled()

    assert asyncio.run(run()) and ran == []


def test_a_closed_share_drops_its_queue_and_the_lane_ends_with_its_last_model(lane):
    a, b = lane.share("a"), lane.share("b")

    async def run():
        await a.run_timed(hold(0.0), BATCH)
        a.close()
        with pytest.raises(RuntimeError, match="closed"):
            await a.run_timed(hold(0.0), BATCH)
        await b.run_timed(hold(0.0), BATCH)  # the other model still runs
        b.close()

    asyncio.run(run())
    for _ in range(200):
        if lane._thread is None:
            break
        time.sleep(0.01)
    assert lane._thread is None  # no thread left behind
    again = lane.share("a")  # a model that comes back gets a new place (a new thread)
    asyncio.run(again.run_timed(hold(0.0), BATCH))
    assert lane.served[-1] == "a"
