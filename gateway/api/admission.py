"""Admission control, the one door every dialect's route goes through: request limits, admission by the
work already queued, the in-flight bound, the timeout.

`await admission.run([RerankQuery, ...])` checks the request's limits (LimitExceeded: documents per query,
pairs per request), estimates its work in tokens, and admits it while the work already admitted plus its own
can finish within `request_timeout_s` at the measured scoring rate; otherwise it says no at once
(Overloaded -> 429 with Retry-After: when enough of the queue will have drained). Admitted requests run at
most `max_in_flight` at once and the rest wait their turn; the wait counts against the timeout
(RequestTimedOut -> 504). A cancelled request (its client left) gives back its place and its queued work.
Characters past the per-document and per-query limits are the pipeline's business: it cuts them when the
request truncates and names the input when it does not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from gateway import metrics
from gateway.config import Settings
from gateway.domain import MAX_CHUNKS_PER_DOC, RerankOutcome, RerankQuery
from gateway.errors import LimitExceeded, Overloaded, RequestTimedOut
from gateway.pipeline import Reranker

CHARS_PER_TOKEN = 4.0  # the estimate before tokenizing: English text averages about 4 characters a token
PREFILTER_COST = 0.3  # a prefilter token costs about a third of a cross-encoder one (2 layers against 6)
SPECIAL_TOKENS = 3  # [CLS] query [SEP] document [SEP]


class WorkRate:
    """Estimated tokens the scorers finish per second of busy time (time with a request running), measured
    from finished requests; older measurements fade (halved every `horizon_s` of busy time).

    Trusted only after `min_busy_s` of busy time: one small request's rate is mostly fixed costs (a call, a
    thread hop) and would make the queue look far slower than it is."""

    def __init__(
        self, *, initial: float | None = None, horizon_s: float = 60.0, min_busy_s: float = 0.5
    ) -> None:
        self.horizon_s = horizon_s
        self.min_busy_s = min_busy_s
        self._busy = 1.0 if initial else 0.0
        self._done = initial or 0.0
        self._running = 0
        self._last = time.monotonic()

    @property
    def per_second(self) -> float | None:
        """None until enough work has finished (until then everything is admitted: nothing to judge by)."""
        return self._done / self._busy if self._done > 0 and self._busy >= self.min_busy_s else None

    def started(self) -> None:
        self._tick()
        self._running += 1

    def finished(self, tokens: float, *, completed: bool) -> None:
        self._tick()
        self._running -= 1
        if completed:
            self._done += tokens
        if self._busy > self.horizon_s:
            self._busy /= 2
            self._done /= 2
        rate = self.per_second
        if rate is not None:
            metrics.WORK_RATE.set(rate)

    def _tick(self) -> None:
        now = time.monotonic()
        if self._running:
            self._busy += now - self._last
        self._last = now


class Admission:
    """Admits by queued work against the request timeout (a queue only as long as it can be served in time),
    then runs at most `max_in_flight` requests at once."""

    def __init__(self, reranker: Reranker, settings: Settings) -> None:
        self.reranker = reranker
        self.settings = settings
        self.rate = WorkRate()
        self.in_flight = 0  # admitted and not yet answered (running or waiting for a slot)
        self.queued_tokens = 0.0  # their estimated work
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    def check_limits(self, queries: Sequence[RerankQuery]) -> None:
        s = self.settings
        for q in queries:
            if len(q.documents) > s.max_documents:
                raise LimitExceeded(
                    f"{len(q.documents)} documents; the limit max_documents is {s.max_documents}",
                    limit="max_documents",
                    value=s.max_documents,
                )
        pairs = sum(len(q.documents) for q in queries)
        if pairs > s.max_pairs:
            raise LimitExceeded(
                f"{pairs} (query, document) pairs in one request; the limit max_pairs is {s.max_pairs}",
                limit="max_pairs",
                value=s.max_pairs,
            )

    def estimate_tokens(self, queries: Sequence[RerankQuery], reranker: Reranker | None = None) -> float:
        """The request's work before tokenizing: characters / 4 per pair, capped at the scored windows; a
        prefilter pass over every document plus the cross-encoder on the `keep` longest."""
        s = self.settings
        reranker = reranker or self.reranker
        models = reranker.models
        window = models.reranker.max_length if models else (s.max_length or 512)
        prefilter_window = models.prefilter.max_length if models and models.prefilter else None
        total = 0.0
        for q in queries:
            query = min(len(q.query), s.max_query_chars) / CHARS_PER_TOKEN
            chunks = min(q.max_chunks_per_doc or s.max_chunks_per_doc, MAX_CHUNKS_PER_DOC)
            cap = window * chunks
            pairs = [
                min(query + min(len(d), s.max_document_chars) / CHARS_PER_TOKEN + SPECIAL_TOKENS, cap)
                for d in q.documents
            ]
            keep, _ = reranker.keep_for(q)
            if prefilter_window and keep and len(pairs) > keep:
                total += PREFILTER_COST * sum(min(p, prefilter_window) for p in pairs)
                pairs = sorted(pairs)[-keep:]
            total += sum(pairs)
        return total

    async def run(
        self, queries: Sequence[RerankQuery], reranker: Reranker | None = None
    ) -> list[RerankOutcome]:
        """Rank `queries` with `reranker` (the served model the request picked; None: this one's own)."""
        reranker = reranker or self.reranker
        self.check_limits(queries)
        if not reranker.loaded:
            await reranker.load()  # a first request's model load is not scoring time
        tokens = self.estimate_tokens(queries, reranker)
        self._admit(tokens)
        self.in_flight += 1
        self.queued_tokens += tokens
        metrics.IN_FLIGHT.inc()
        metrics.QUEUED_WORK.set(self.queued_tokens)
        timeout = self.settings.request_timeout_s
        try:
            return await asyncio.wait_for(self._run(queries, tokens, reranker), timeout)
        except asyncio.TimeoutError:
            metrics.REJECTED.labels("timeout").inc()
            raise RequestTimedOut(f"the request took longer than request_timeout_s ({timeout}s)") from None
        finally:
            self.in_flight -= 1
            self.queued_tokens = max(0.0, self.queued_tokens - tokens)
            metrics.IN_FLIGHT.dec()
            metrics.QUEUED_WORK.set(self.queued_tokens)

    def _admit(self, tokens: float) -> None:
        """Overloaded unless the queued work and this request's can finish within the request timeout."""
        rate = self.rate.per_second
        if rate is None or self.in_flight == 0:
            return  # nothing measured yet, or nothing queued: a lone request always runs
        timeout = self.settings.request_timeout_s
        finish_s = (self.queued_tokens + tokens) / rate
        if finish_s <= timeout:
            return
        metrics.REJECTED.labels("overloaded").inc()
        raise Overloaded(
            f"{self.in_flight} requests hold about {self.queued_tokens:.0f} tokens of work "
            f"({self.queued_tokens / rate:.1f}s at {rate:.0f} tokens/s); with this request's "
            f"{tokens:.0f} they would not finish within request_timeout_s ({timeout}s)",
            retry_after=finish_s - timeout,  # when enough of the queue has drained; the HTTP layer rounds up
        )

    async def _run(
        self, queries: Sequence[RerankQuery], tokens: float, reranker: Reranker
    ) -> list[RerankOutcome]:
        async with self._semaphore():
            self.rate.started()
            completed = False
            try:
                outcomes = await reranker.rerank_many(queries)
                completed = True
                return outcomes
            finally:
                self.rate.finished(tokens, completed=completed)

    def _semaphore(self) -> asyncio.Semaphore:
        """`max_in_flight` slots, made in the running loop (a test client may start several loops)."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(self.settings.max_in_flight))
        return self._slots[1]
