"""Primary -> fallback compositions of two scorers, one class per policy.

- `SplittingFallback` (CUDA -> CPU): a failing batch is halved once and each half retried on the primary; a
  half that still fails is scored by the fallback. The primary stays in service (a CUDA OOM on one big batch
  says nothing about the next one).
- `MarkDownFallback` (Triton -> local ONNX Runtime): after a failure the primary is marked down and skipped,
  and re-probed in the background until it answers ready (`gateway.backends.health`).

Every batch the fallback scores is counted in `reranker_fallbacks_total{from_backend,to_backend,reason,model}`.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from gateway import metrics
from gateway.backends.base import BatchScores, EncodedBatch, Scorer, describe_scorer
from gateway.backends.health import PRIMARY_PROBE_TIMEOUT_S, REPROBE_S, Health, attempt, failure_reason
from gateway.errors import BackendFailed

log = logging.getLogger(__name__)


def split_batch(batch: EncodedBatch) -> tuple[EncodedBatch, EncodedBatch]:
    half = batch.size // 2
    return (
        EncodedBatch({k: v[:half] for k, v in batch.inputs.items()}),
        EncodedBatch({k: v[half:] for k, v in batch.inputs.items()}),
    )


class FallbackScorer(ABC):
    """Scores with `primary`; what fails there, with `fallback`. A Scorer; subclasses are the policies.

    `probe_timeout_s` bounds the primary's readiness call (`ready()`, the re-probe); `reprobe_s` is the
    pause between re-probes of a primary marked down.
    """

    def __init__(
        self,
        primary: Scorer,
        fallback: Scorer,
        *,
        reprobe_s: float = REPROBE_S,
        probe_timeout_s: float = PRIMARY_PROBE_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        model: str = "",
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.model = model  # the metrics' `model` label
        self.name = primary.name
        self.input_names = primary.input_names
        sizes = [s for s in (primary.max_batch_size, fallback.max_batch_size) if s]
        self.max_batch_size = min(sizes) if sizes else None
        self.health = Health(
            primary.name, primary.ready, reprobe_s=reprobe_s, probe_timeout_s=probe_timeout_s, clock=clock
        )

    @property
    def primary_up(self) -> bool:
        return self.health.up

    @abstractmethod
    async def score(self, batch: EncodedBatch) -> BatchScores: ...

    async def _on_fallback(self, batch: EncodedBatch, reason: str) -> BatchScores:
        metrics.FALLBACKS.labels(self.primary.name, self.fallback.name, reason, self.model).inc()
        try:
            return await attempt(self.fallback, batch)
        except Exception as exc:
            raise BackendFailed(
                f"{self.primary.name} failed ({reason}) and the fallback {self.fallback.name} failed too"
            ) from exc

    async def ready(self) -> bool:
        """The primary's readiness (bounded; a ready answer brings it back), else the fallback's."""
        if await self.health.check():
            self.health.mark_up()
            return True
        return await self.fallback.ready()

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "primary_up": self.primary_up,
            "primary": describe_scorer(self.primary),
            "fallback": describe_scorer(self.fallback),
        }

    async def close(self) -> None:
        self.health.close()
        await self.primary.close()
        await self.fallback.close()


class SplittingFallback(FallbackScorer):
    """CUDA -> CPU: a failed batch is halved once on the primary; a half that still fails goes to the fallback.
    The primary is never marked down (an OOM on one big batch says nothing about the next)."""

    def __init__(
        self,
        primary: Scorer,
        fallback: Scorer,
        *,
        probe_timeout_s: float = PRIMARY_PROBE_TIMEOUT_S,
        model: str = "",
    ) -> None:
        super().__init__(primary, fallback, probe_timeout_s=probe_timeout_s, model=model)  # never marked down

    async def score(self, batch: EncodedBatch) -> BatchScores:
        try:
            return await attempt(self.primary, batch)
        except Exception as exc:
            reason = failure_reason(exc)
            log.warning("%s failed on a batch of %d (%s): %s", self.primary.name, batch.size, reason, exc)
            if batch.size > 1:
                return await self._split(batch)
            return await self._on_fallback(batch, reason)

    async def _split(self, batch: EncodedBatch) -> BatchScores:
        parts: list[BatchScores] = []
        for half in split_batch(batch):
            try:
                parts.append(await attempt(self.primary, half))
            except Exception as exc:
                parts.append(await self._on_fallback(half, failure_reason(exc)))
        names = list(dict.fromkeys(name for p in parts for name in p.backends))
        return BatchScores(
            logits=np.concatenate([p.logits for p in parts]).astype(np.float32, copy=False),
            backend=names[0],
            also=tuple(names[1:]),
        )


class MarkDownFallback(FallbackScorer):
    """Remote -> local: a failure marks the primary down; the fallback scores until a re-probe (every
    `reprobe_s`, bounded by `probe_timeout_s`) finds the primary ready again."""

    async def score(self, batch: EncodedBatch) -> BatchScores:
        if not self.health.up:
            self.health.maybe_reprobe()
            if not self.health.up:
                return await self._on_fallback(batch, "primary_down")
        try:
            return await attempt(self.primary, batch)
        except Exception as exc:
            reason = failure_reason(exc)
            log.warning("%s failed on a batch of %d (%s): %s", self.primary.name, batch.size, reason, exc)
            self.health.mark_down(reason)
            return await self._on_fallback(batch, reason)
