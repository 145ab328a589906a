"""Admission control, the one door every dialect's route goes through: request limits, admission by the
work already queued, the in-flight bound, the timeout.

`await admission.run([RerankQuery, ...], reranker)` checks the request's limits (LimitExceeded: documents per
query, pairs per request), plans the queries on the model (gateway/plan.py, which estimates their work in tokens), and admits it while the work already admitted plus its own
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
from dataclasses import dataclass

from gateway import metrics
from gateway.config import Settings
from gateway.domain import RerankOutcome, RerankQuery
from gateway.errors import LimitExceeded, Overloaded, RequestTimedOut
from gateway.pipeline import Reranker
from gateway.plan import RequestPlan


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


@dataclass(frozen=True)
class AdmissionConfig:
    """Admission's limits (a slice of `Settings`)."""

    max_documents: int = 1000
    max_pairs: int = 4000
    request_timeout_s: float = 30.0
    max_in_flight: int = 16

    @classmethod
    def from_settings(cls, s: Settings) -> AdmissionConfig:
        return cls(s.max_documents, s.max_pairs, s.request_timeout_s, s.max_in_flight)


class Admission:
    """Admits by queued work against the request timeout (a queue only as long as it can be served in time),
    then runs at most `max_in_flight` requests at once. One per process, whichever model a request asks for:
    the models share the cores."""

    def __init__(self, reranker: Reranker, config: AdmissionConfig) -> None:
        self.reranker = reranker  # the default model
        self.config = config
        self.rate = WorkRate()
        self.in_flight = 0  # admitted and not yet answered (running or waiting for a slot)
        self.queued_tokens = 0.0  # their estimated work
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    def check_limits(self, queries: Sequence[RerankQuery]) -> None:
        c = self.config
        for q in queries:
            if len(q.documents) > c.max_documents:
                raise LimitExceeded(
                    f"{len(q.documents)} documents; the limit max_documents is {c.max_documents}",
                    limit="max_documents",
                    value=c.max_documents,
                )
        pairs = sum(len(q.documents) for q in queries)
        if pairs > c.max_pairs:
            raise LimitExceeded(
                f"{pairs} (query, document) pairs in one request; the limit max_pairs is {c.max_pairs}",
                limit="max_pairs",
                value=c.max_pairs,
            )

    async def run(
        self, queries: Sequence[RerankQuery], reranker: Reranker | None = None
    ) -> list[RerankOutcome]:
        """Check the limits, plan the queries on `reranker` (None: the default model), admit their estimated
        work or refuse it, and run the plans."""
        reranker = reranker or self.reranker
        self.check_limits(queries)
        if not reranker.loaded:
            await reranker.load()  # a first request's model load is not scoring time
        plans = reranker.plan(queries)
        tokens = sum(p.estimated_tokens for p in plans)
        self._admit(tokens)
        self.in_flight += 1
        self.queued_tokens += tokens
        metrics.IN_FLIGHT.inc()
        metrics.QUEUED_WORK.set(self.queued_tokens)
        timeout = self.config.request_timeout_s
        try:
            return await asyncio.wait_for(self._run(reranker, plans, tokens), timeout)
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
        timeout = self.config.request_timeout_s
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
        self, reranker: Reranker, plans: Sequence[RequestPlan], tokens: float
    ) -> list[RerankOutcome]:
        async with self._semaphore():
            self.rate.started()
            completed = False
            try:
                outcomes = await reranker.run(plans)
                completed = True
                return outcomes
            finally:
                self.rate.finished(tokens, completed=completed)

    def _semaphore(self) -> asyncio.Semaphore:
        """`max_in_flight` slots, made in the running loop (a test client may start several loops)."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(self.config.max_in_flight))
        return self._slots[1]
