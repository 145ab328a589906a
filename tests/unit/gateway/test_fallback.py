from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway import metrics
from gateway.backends.base import BatchScores, EncodedBatch
from gateway.backends.fallback import MarkDownFallback, SplittingFallback
from gateway.backends.onnx_local import ScorerFailure
from gateway.errors import BackendFailed


class Fake:
    def __init__(self, name, *, fail_over=None, fail_always=False, value=1.0):
        self.name = name
        self.input_names = ("input_ids",)
        self.max_batch_size = None
        self.fail_over = fail_over
        self.fail_always = fail_always
        self.value = value
        self.calls: list[int] = []
        self.is_ready = True

    async def score(self, batch: EncodedBatch) -> BatchScores:
        self.calls.append(batch.size)
        if self.fail_always or (self.fail_over is not None and batch.size > self.fail_over):
            raise ScorerFailure("CUDA failure 2: out of memory", reason="cuda_oom")
        return BatchScores(np.full(batch.size, self.value, dtype=np.float32), self.name)

    async def ready(self) -> bool:
        return self.is_ready

    async def close(self) -> None:
        return None


def batch(n: int) -> EncodedBatch:
    return EncodedBatch({"input_ids": np.arange(n * 3, dtype=np.int64).reshape(n, 3)})


def fallbacks(reason: str) -> float:
    return metrics.FALLBACKS.labels("onnx-cuda", "onnx-cpu", reason, "")._value.get()


def test_oom_halves_once_on_the_primary():
    gpu, cpu = Fake("onnx-cuda", fail_over=2), Fake("onnx-cpu", value=2.0)
    scorer = SplittingFallback(gpu, cpu)
    out = asyncio.run(scorer.score(batch(4)))
    assert gpu.calls == [4, 2, 2] and cpu.calls == []
    assert out.backend == "onnx-cuda" and out.logits.tolist() == [1.0] * 4


def test_halves_that_still_fail_go_to_the_cpu_and_are_counted():
    before = fallbacks("cuda_oom")
    gpu, cpu = Fake("onnx-cuda", fail_over=1), Fake("onnx-cpu", value=2.0)
    scorer = SplittingFallback(gpu, cpu)
    out = asyncio.run(scorer.score(batch(5)))
    assert gpu.calls == [5, 2, 3] and cpu.calls == [2, 3]
    assert out.backend == "onnx-cpu" and out.logits.shape == (5,)
    assert fallbacks("cuda_oom") == before + 2
    assert scorer.primary_up  # a CUDA OOM does not take the GPU out of service


def test_mark_down_skips_the_primary_and_reprobes():
    async def run():
        now = [0.0]
        remote, local = Fake("triton-grpc", fail_always=True), Fake("onnx-cpu")
        scorer = MarkDownFallback(remote, local, reprobe_s=5, clock=lambda: now[0])
        assert (await scorer.score(batch(2))).backend == "onnx-cpu"
        assert not scorer.primary_up
        await scorer.score(batch(2))
        assert remote.calls == [2]  # skipped while down
        remote.fail_always = False
        now[0] = 6.0
        await scorer.score(batch(2))  # starts a background re-probe
        await asyncio.sleep(0.01)
        assert scorer.primary_up
        assert (await scorer.score(batch(2))).backend == "triton-grpc"

    asyncio.run(run())


def test_both_failing_is_a_backend_error():
    scorer = MarkDownFallback(Fake("a", fail_always=True), Fake("b", fail_always=True))
    with pytest.raises(BackendFailed):
        asyncio.run(scorer.score(batch(1)))


def test_ready_is_true_when_either_side_is():
    primary, fallback = Fake("a"), Fake("b")
    primary.is_ready = False
    scorer = MarkDownFallback(primary, fallback)
    assert asyncio.run(scorer.ready())
    fallback.is_ready = False
    assert not asyncio.run(scorer.ready())
