"""Admission control, the one door every dialect's route goes through: limits, in-flight bound, timeout.

`await admission.run([RerankQuery, ...])` checks the configured limits (LimitExceeded), refuses work
beyond `max_in_flight` requests at once (Overloaded -> 429 + Retry-After; no unbounded queue), and
bounds the whole request by `request_timeout_s` (RequestTimedOut -> 504).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from gateway import metrics
from gateway.config import Settings
from gateway.domain import RerankOutcome, RerankQuery
from gateway.errors import LimitExceeded, Overloaded, RequestTimedOut
from gateway.pipeline import Reranker


class Admission:
    """Says no early when full (TEI's semaphore try_acquire): no queue of its own, so no hidden wait."""

    def __init__(self, reranker: Reranker, settings: Settings) -> None:
        self.reranker = reranker
        self.settings = settings
        self.in_flight = 0
        self._recent_s = 0.5  # moving average of request time, for Retry-After

    def check_limits(self, queries: Sequence[RerankQuery]) -> None:
        s = self.settings
        for q in queries:
            if len(q.query) > s.max_query_chars:
                raise LimitExceeded(
                    f"query has {len(q.query)} characters; the limit max_query_chars is {s.max_query_chars}",
                    limit="max_query_chars",
                    value=s.max_query_chars,
                )
            if len(q.documents) > s.max_documents:
                raise LimitExceeded(
                    f"{len(q.documents)} documents; the limit max_documents is {s.max_documents}",
                    limit="max_documents",
                    value=s.max_documents,
                )
            for i, doc in enumerate(q.documents):
                if len(doc) > s.max_document_chars:
                    raise LimitExceeded(
                        f"document {i} has {len(doc)} characters; the limit max_document_chars is "
                        f"{s.max_document_chars}",
                        limit="max_document_chars",
                        value=s.max_document_chars,
                    )

    async def run(self, queries: Sequence[RerankQuery]) -> list[RerankOutcome]:
        self.check_limits(queries)
        if self.in_flight >= self.settings.max_in_flight:
            metrics.REJECTED.labels("overloaded").inc()
            raise Overloaded(
                f"{self.in_flight} requests in flight; the limit max_in_flight is {self.settings.max_in_flight}",
                retry_after=self._recent_s,  # the HTTP layer rounds it (gateway/api/errors.py retry_after)
            )
        self.in_flight += 1
        metrics.IN_FLIGHT.inc()
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(self.reranker.rerank_many(queries), self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            metrics.REJECTED.labels("timeout").inc()
            raise RequestTimedOut(
                f"the request took longer than request_timeout_s ({self.settings.request_timeout_s}s)"
            ) from None
        finally:
            self.in_flight -= 1
            metrics.IN_FLIGHT.dec()
            self._recent_s = 0.8 * self._recent_s + 0.2 * (time.perf_counter() - started)
