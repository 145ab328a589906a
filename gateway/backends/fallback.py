"""Primary -> fallback composition of two scorers (CUDA -> CPU, Triton -> local ONNX Runtime).

`split_on_failure` (the GPU case): a failing batch is halved once and retried on the primary; a half that
still fails is scored by the fallback. `mark_down` (the remote case): after a failure the primary is
skipped (no time wasted on a dead server) and its `ready()` is re-probed every `reprobe_s` seconds in the
background; once it answers ready it takes the traffic again. Every batch the fallback scores is counted
in `reranker_fallbacks_total{from_backend,to_backend,reason}`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gateway import metrics
from gateway.backends.base import BatchScores, EncodedBatch, Scorer, cancelled_by_caller, describe_scorer
from gateway.domain import join_backends
from gateway.errors import BackendFailed

log = logging.getLogger(__name__)


def failure_reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        return reason
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionError | OSError):
        return "unavailable"
    return type(exc).__name__.lower()


async def attempt(scorer: Scorer, batch: EncodedBatch) -> BatchScores:
    """`scorer.score(batch)`; a cancellation that is not the caller's becomes a BackendFailed.

    Only the request's own cancellation (client gone, request timeout, shutdown) may stop the fallback;
    a call the backend's client library cancelled (a closed channel) is a failure like any other.
    """
    try:
        return await scorer.score(batch)
    except asyncio.CancelledError:
        if cancelled_by_caller():
            raise
        raise BackendFailed(
            f"{scorer.name}: the call was cancelled by the backend", reason="cancelled"
        ) from None


def split_batch(batch: EncodedBatch) -> tuple[EncodedBatch, EncodedBatch]:
    half = batch.size // 2
    return (
        EncodedBatch({k: v[:half] for k, v in batch.inputs.items()}),
        EncodedBatch({k: v[half:] for k, v in batch.inputs.items()}),
    )


class FallbackScorer:
    """Scores with `primary`; on failure, with `fallback`. Implements the Scorer protocol."""

    def __init__(
        self,
        primary: Scorer,
        fallback: Scorer,
        *,
        split_on_failure: bool = False,
        mark_down: bool = True,
        reprobe_s: float = 5.0,
        probe_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = primary.name
        self.input_names = primary.input_names
        sizes = [s for s in (primary.max_batch_size, fallback.max_batch_size) if s]
        self.max_batch_size = min(sizes) if sizes else None
        self.split_on_failure = split_on_failure
        self.mark_down = mark_down
        self.reprobe_s = reprobe_s
        self.probe_timeout_s = probe_timeout_s
        self._clock = clock
        self.primary_up = True
        self._next_probe = 0.0
        self._probe_task: asyncio.Task[None] | None = None

    async def score(self, batch: EncodedBatch) -> BatchScores:
        if not self.primary_up:
            self._maybe_reprobe()
            if not self.primary_up:
                return await self._on_fallback(batch, "primary_down")
        try:
            return await attempt(self.primary, batch)
        except Exception as exc:
            reason = failure_reason(exc)
            log.warning("%s failed on a batch of %d (%s): %s", self.primary.name, batch.size, reason, exc)
            if self.split_on_failure and batch.size > 1:
                return await self._split(batch)
            if self.mark_down:
                self._down()
            return await self._on_fallback(batch, reason)

    async def _split(self, batch: EncodedBatch) -> BatchScores:
        parts: list[BatchScores] = []
        for half in split_batch(batch):
            try:
                parts.append(await attempt(self.primary, half))
            except Exception as exc:
                parts.append(await self._on_fallback(half, failure_reason(exc)))
        return BatchScores(
            logits=np.concatenate([p.logits for p in parts]).astype(np.float32, copy=False),
            backend=join_backends(*(p.backend for p in parts)),
        )

    async def _on_fallback(self, batch: EncodedBatch, reason: str) -> BatchScores:
        metrics.FALLBACKS.labels(self.primary.name, self.fallback.name, reason).inc()
        try:
            return await attempt(self.fallback, batch)
        except Exception as exc:
            raise BackendFailed(
                f"{self.primary.name} failed ({reason}) and the fallback {self.fallback.name} failed too"
            ) from exc

    def _down(self) -> None:
        if self.primary_up:
            log.warning("%s marked down; re-probing every %.1fs", self.primary.name, self.reprobe_s)
        self.primary_up = False
        self._next_probe = self._clock() + self.reprobe_s

    def _maybe_reprobe(self) -> None:
        if self._probe_task is None and self._clock() >= self._next_probe:
            self._probe_task = asyncio.get_running_loop().create_task(self._reprobe())

    async def _reprobe(self) -> None:
        try:
            ok = await asyncio.wait_for(self.primary.ready(), self.probe_timeout_s)
        except Exception:
            ok = False
        finally:
            self._probe_task = None
        if ok:
            log.info("%s is ready again: using it as the primary", self.primary.name)
            self.primary_up = True
        else:
            self._next_probe = self._clock() + self.reprobe_s

    async def ready(self) -> bool:
        try:
            primary_ok = await asyncio.wait_for(self.primary.ready(), self.probe_timeout_s)
        except Exception:
            primary_ok = False
        if primary_ok:
            self.primary_up = True
            return True
        return await self.fallback.ready()

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "primary_up": self.primary_up,
            "primary": describe_scorer(self.primary),
            "fallback": describe_scorer(self.fallback),
        }

    @property
    def active_name(self) -> str:
        return self.primary.name if self.primary_up else self.fallback.name

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
        await self.primary.close()
        await self.fallback.close()
