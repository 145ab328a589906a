"""The CPU lane's scheduler: weighted fair queuing of batches across models (gateway/backends/onnx_local.py).
Measured by the order the batches ran in (`FairLane.served`) and the lane's counters, not by milliseconds."""

from __future__ import annotations

import asyncio
import itertools
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
        if lane.alive_workers == 0:
            break
        time.sleep(0.01)
    assert lane.alive_workers == 0  # no thread left behind
    again = lane.share("a")  # a model that comes back gets a new place (a new thread)
    asyncio.run(again.run_timed(hold(0.0), BATCH))
    assert lane.served[-1] == "a"


@pytest.fixture()
def two_lane():
    lane = FairLane("test-two-workers", trim_when_idle=True, workers=2)
    yield lane
    lane.close()


def two_meeting_batches(lane: FairLane, timeout_s: float) -> tuple[list[object], threading.Barrier]:
    """Two batches of one model, each waiting (at most `timeout_s`) until the other has started too: what they
    returned or raised, and their barrier."""
    share = lane.share("m")
    both = threading.Barrier(2, timeout=timeout_s)

    def meet(_: object) -> np.ndarray:
        both.wait()
        return np.zeros(1, dtype=np.float32)

    async def run():
        return await asyncio.gather(
            share.run_timed(meet, BATCH), share.run_timed(meet, BATCH), return_exceptions=True
        )

    return asyncio.run(run()), both


def test_two_workers_run_two_batches_at_once(two_lane):
    """Only a lane that runs both batches at once gets them past each other's wait."""
    results, both = two_meeting_batches(two_lane, 30)
    assert not any(isinstance(r, BaseException) for r in results) and not both.broken
    assert two_lane.share("m").batches == 2 and two_lane.alive_workers == 2


def test_one_worker_runs_one_batch_at_a_time(lane):
    """The same two batches on a one-worker lane: the second never starts while the first waits for it."""
    results, _ = two_meeting_batches(lane, 0.3)
    assert all(isinstance(r, threading.BrokenBarrierError) for r in results), results


def test_with_two_workers_a_burst_waits_behind_the_running_batches_only(two_lane):
    """Both workers hold a batch of the big model, 20 more are queued: the small model's 5 go next."""
    big, small = two_lane.share("big"), two_lane.share("small")
    started = [threading.Event(), threading.Event()]
    release = threading.Event()

    async def run():
        first = [asyncio.ensure_future(big.run_timed(gate(s, release), BATCH)) for s in started]
        assert all([await asyncio.to_thread(s.wait, 30) for s in started])
        queued = [asyncio.ensure_future(big.run_timed(hold(0.01), BATCH)) for _ in range(20)]
        await asyncio.sleep(0.05)
        burst = [asyncio.ensure_future(small.run_timed(hold(0.001), BATCH)) for _ in range(5)]
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.gather(*first, *queued, *burst)

    asyncio.run(run())
    order = list(two_lane.served)
    assert order[:2] == ["big", "big"] and order[2:7] == ["small"] * 5, order[:9]
    assert big.batches == 22 and small.batches == 5


def test_with_two_workers_busy_models_share_the_lane_by_weight(two_lane):
    heavy, light = two_lane.share("heavy", weight=2.0), two_lane.share("light", weight=1.0)

    async def run():
        await asyncio.gather(*(m.run_timed(hold(0.004), BATCH) for _ in range(30) for m in (heavy, light)))

    asyncio.run(run())
    first = list(two_lane.served)[:30]
    assert 16 <= first.count("heavy") <= 24, first


def test_two_workers_end_with_the_last_model(two_lane):
    share = two_lane.share("m")

    async def run():
        await asyncio.gather(*(share.run_timed(hold(0.002), BATCH) for _ in range(8)))

    asyncio.run(run())
    share.close()
    for _ in range(200):
        if two_lane.alive_workers == 0:
            break
        time.sleep(0.01)
    assert two_lane.alive_workers == 0


def test_a_lane_needs_a_worker():
    with pytest.raises(ValueError, match="at least one worker"):
        FairLane("none", trim_when_idle=False, workers=0)


def test_a_wide_batch_runs_alone_and_narrow_ones_side_by_side(two_lane):
    """A model whose batches take both workers (width 2) never runs beside another batch; two narrow models'
    batches still run two at a time; fair order is kept (the wide batches are not starved)."""
    wide, narrow = two_lane.share("wide", width=2), two_lane.share("narrow")
    intervals: list[tuple[str, float, float]] = []
    lock = threading.Lock()

    def timed(model: str, seconds: float):
        def run(_: object) -> np.ndarray:
            start = time.perf_counter()
            time.sleep(seconds)
            with lock:
                intervals.append((model, start, time.perf_counter()))
            return np.zeros(1, dtype=np.float32)

        return run

    async def run():
        jobs = [narrow.run_timed(timed("narrow", 0.01), BATCH) for _ in range(12)]
        jobs += [wide.run_timed(timed("wide", 0.02), BATCH) for _ in range(6)]
        await asyncio.gather(*jobs)

    asyncio.run(run())
    assert wide.batches == 6 and narrow.batches == 12
    for model, start, end in intervals:
        if model != "wide":
            continue
        beside = [m for m, s, e in intervals if (s, e) != (start, end) and s < end and e > start]
        assert beside == [], (start, end, beside)
    narrow_only = sorted((s, e) for m, s, e in intervals if m == "narrow")
    assert any(b[0] < a[1] for a, b in itertools.pairwise(narrow_only))  # two at once
    order = list(two_lane.served)
    assert "wide" in order[:10], order  # fair order: the wide model is not left for last


def test_a_share_cannot_be_wider_than_its_lane(two_lane):
    with pytest.raises(ValueError, match="cannot take 3 of the lane's 2 workers"):
        two_lane.share("too-wide", width=3)
