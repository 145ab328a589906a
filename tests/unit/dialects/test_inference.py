"""A request's way to the pipeline (gateway/api/deps.py Inference): the work runs on the model the body names,
and stops as soon as the client leaves, giving back its place before the handler answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest
from dialect_fakes import DOCS, QUERY, FakePipeline, served
from starlette.requests import Request

from gateway.api.deps import Inference
from gateway.domain import RerankOutcome, RerankQuery
from gateway.errors import ClientDisconnected
from gateway.registry import ServedModels


class SlowAdmission:
    """Holds its place until cancelled; records when it gave the place back."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.released_at: float | None = None

    async def run(self, queries: Sequence[RerankQuery], reranker: Any = None) -> list[RerankOutcome]:
        self.in_flight += 1
        try:
            await asyncio.sleep(60)
            return []
        finally:
            self.in_flight -= 1
            self.released_at = time.monotonic()


def request_that_leaves_after(seconds: float) -> Request:
    async def receive() -> dict[str, Any]:
        await asyncio.sleep(seconds)
        return {"type": "http.disconnect"}

    return Request({"type": "http", "method": "POST", "path": "/v1/rerank", "headers": []}, receive)


def test_the_work_stops_when_the_client_leaves_and_gives_back_its_place():
    admission = SlowAdmission()
    inference = Inference(
        request_that_leaves_after(0.05), admission, ServedModels([served(FakePipeline("m"))])
    )

    async def scenario() -> tuple[float, int]:
        started = time.monotonic()
        with pytest.raises(ClientDisconnected):
            await inference.run([RerankQuery(QUERY, tuple(DOCS))])
        return time.monotonic() - started, admission.in_flight  # as the handler answers

    took, in_flight = asyncio.run(scenario())
    assert took < 0.2  # not a poll interval later, nor the work's 60 s
    assert in_flight == 0 and admission.released_at is not None
