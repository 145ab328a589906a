"""The one interface between the pipeline and the runtimes (local ONNX Runtime, Triton, fallbacks)."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, runtime_checkable

from gateway.domain import BatchScores, EncodedBatch

__all__ = [
    "BatchScores",
    "EncodedBatch",
    "Scorer",
    "cancelled_by_caller",
    "describe_scorer",
]  # the batch types are the domain's, re-exported here


@runtime_checkable
class Scorer(Protocol):
    """Scores encoded batches. Implementations: onnx_local, triton, fallback (a composition)."""

    name: str  # e.g. "onnx-cpu", "onnx-cuda", "triton-grpc", "triton-http"
    input_names: tuple[str, ...]
    max_batch_size: int | None  # None: no limit of its own

    async def score(self, batch: EncodedBatch) -> BatchScores: ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


def describe_scorer(scorer: Scorer) -> dict[str, Any]:
    """What /info shows of a scorer: its own `info()` when it has one (compositions, the Triton pool)."""
    info = getattr(scorer, "info", None)
    return dict(info()) if callable(info) else {"name": scorer.name}


def cancelled_by_caller() -> bool:
    """True when the running task itself is being cancelled (its request left or timed out).

    A backend call can also end in `CancelledError` because the client library cancelled it, e.g. when a
    shared gRPC channel is closed under it: that is a backend failure the fallback must serve, not the
    request's cancellation. `Task.cancelling()` (Python 3.11+) tells the two apart; without it every
    cancellation is taken as the caller's, the safe reading for shutdown.
    """
    task = asyncio.current_task()
    if task is None:
        return True
    cancelling = getattr(task, "cancelling", None)
    return True if cancelling is None else cancelling() > 0
