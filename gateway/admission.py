"""Admission control, the one door every dialect's route goes through: request limits, admission by the work
already queued, the in-flight bound, the deadline. Per served model: each has its own limits, deadline
(`request_timeout_s`), in-flight bound and share of the machine (`weight`), from its table in the models file.

`await admission.run([RerankQuery, ...], reranker)` checks the model's limits (LimitExceeded: documents per
query, pairs per request), plans the queries on the model (gateway/plan.py: their tokens per stage, counted
with the model's own pair layout) and prices them in seconds at that model's measured speed (gateway/speed.py:
measured at load by a warm-up, kept current from its batches; never another model's). It admits the request
when it can finish before its deadline: the model's queued work and its own, plus what the other models take
of the runtime meanwhile under weighted fair sharing (their queued work, or the share their batches held
recently when that is more), plus one batch already running. Admitted work is priced again at each decision,
at the speed measured now: a model that slows down while it shares the machine makes its queue longer.
Otherwise it says no at once (Overloaded -> 429 with Retry-After: when enough will have drained), instead of
queueing work that would answer 504 after the wait. A request whose own work exceeds the deadline, however
empty the queue, is refused at once too, as a limit (LimitExceeded `request_timeout_s` -> 413: send less);
when that verdict would rest on a speed measured long ago while nothing of the model runs, the model's speed is
measured again first (a speed measured on a busier machine must not lock big requests out for good).

Admitted requests run at most `max_in_flight` at once per model and the rest wait their turn; the wait counts
against the deadline (RequestTimedOut -> 504, which only a misjudged estimate reaches now). A cancelled
request (its client left) gives back its place and its queued work.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway import metrics
from gateway.config import Settings
from gateway.domain import RerankOutcome, RerankQuery
from gateway.errors import LimitExceeded, Overloaded, RequestTimedOut
from gateway.pipeline import Reranker
from gateway.plan import RequestPlan

# Admit only work that is estimated to finish within this share of its deadline: the estimate counts the
# runtime's service time, not tokenizing, the HTTP round trip or a machine that slows down meanwhile, and a
# request refused at once (429) serves its client better than one answered 504 after waiting.
ADMIT_WITHIN = 0.8
# The other models' recent share of the runtime counts up to this much of it (the rest is this model's).
MOST_HELD_BY_OTHERS = 0.9
# A speed measured longer ago than this is measured again before it refuses a request as too large.
STALE_SPEED_S = 60.0


@dataclass(frozen=True)
class AdmissionConfig:
    """One model's admission limits (a slice of the model's settings) and its share of the runtime."""

    max_documents: int = 1000
    max_pairs: int = 4000
    request_timeout_s: float = 30.0
    max_in_flight: int = 16
    weight: float = 1.0

    @classmethod
    def from_settings(cls, s: Settings, *, weight: float = 1.0) -> AdmissionConfig:
        return cls(s.max_documents, s.max_pairs, s.request_timeout_s, s.max_in_flight, weight)

    def check_limits(self, queries: Sequence[RerankQuery]) -> None:
        for q in queries:
            if len(q.documents) > self.max_documents:
                raise LimitExceeded(
                    f"{len(q.documents)} documents; the limit max_documents is {self.max_documents}",
                    limit="max_documents",
                    value=self.max_documents,
                )
        pairs = sum(len(q.documents) for q in queries)
        if pairs > self.max_pairs:
            raise LimitExceeded(
                f"{pairs} (query, document) pairs in one request; the limit max_pairs is {self.max_pairs}",
                limit="max_pairs",
                value=self.max_pairs,
            )


class Priced(Protocol):
    """What admission reads of a model's speed (gateway/speed.py `ModelSpeed`)."""

    def seconds(self, plans: Sequence[RequestPlan]) -> float | None: ...
    def busy_share(self) -> float: ...
    @property
    def batch_seconds(self) -> float: ...


@dataclass
class ModelQueue:
    """One served model's admitted requests: how many, their estimated runtime seconds at the model's current
    speed, their slots; and what the model's recent batches took of the runtime."""

    name: str
    config: AdmissionConfig
    in_flight: int = 0  # admitted and not yet answered (running or waiting for a slot)
    queued_s: float = 0.0  # their estimated runtime seconds (0 for work priced before a speed was known)
    batch_s: float = 0.0  # how long one of its batches holds the runtime
    busy_share: float = 0.0  # the share of the recent seconds its batches held the runtime
    speed: Priced | None = None  # the model's measured speed, which prices its admitted work again
    _admitted: dict[int, tuple[Sequence[RequestPlan], float]] = field(default_factory=dict, repr=False)
    _tickets: Iterator[int] = field(default_factory=itertools.count, repr=False)
    _slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = field(default=None, repr=False)

    def enter(self, seconds: float, plans: Sequence[RequestPlan] = ()) -> int:
        """Admit a request of `plans`, priced `seconds` now; its ticket, for `leave`."""
        ticket = next(self._tickets)
        self._admitted[ticket] = (plans, seconds)
        self.in_flight += 1
        self.queued_s += seconds
        self._publish()
        return ticket

    def leave(self, ticket: int) -> None:
        self._admitted.pop(ticket, None)
        self.in_flight -= 1
        self.reprice()

    def reprice(self) -> None:
        """The admitted work in seconds at the model's speed now (it drifts while other work shares the
        machine; work admitted before the speed was known gets its price), and its recent use of the runtime."""
        speed = self.speed
        total = 0.0
        for plans, charged in self._admitted.values():
            seconds = speed.seconds(plans) if speed is not None and plans else None
            total += charged if seconds is None else seconds
        self.queued_s = total
        if speed is not None:
            self.batch_s = speed.batch_seconds
            self.busy_share = speed.busy_share()
        self._publish()

    def slots(self) -> asyncio.Semaphore:
        """`max_in_flight` slots, made in the running loop (a test client may start several loops)."""
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(self.config.max_in_flight))
        return self._slots[1]

    def _publish(self) -> None:
        metrics.IN_FLIGHT.labels(self.name).set(self.in_flight)
        metrics.QUEUED_WORK.labels(self.name).set(self.queued_s)


class Admission:
    """Admits by queued work against each model's deadline, with the models' shares of the runtime, then runs
    at most each model's `max_in_flight` requests at once. One per process: the models share the cores."""

    def __init__(
        self,
        reranker: Reranker,
        config: AdmissionConfig,
        per_model: Mapping[str, AdmissionConfig] | None = None,
    ) -> None:
        self.reranker = reranker  # the default model
        self.config = config  # the flat defaults, for a model without a configuration of its own
        self._configs = dict(per_model or {})
        self._queues: dict[str, ModelQueue] = {}

    def queue(self, name: str) -> ModelQueue:
        """`name`'s admitted work (made on first use)."""
        if name not in self._queues:
            self._queues[name] = ModelQueue(name, self._configs.get(name, self.config))
        return self._queues[name]

    @property
    def in_flight(self) -> int:
        return sum(q.in_flight for q in self._queues.values())

    async def run(
        self, queries: Sequence[RerankQuery], reranker: Reranker | None = None
    ) -> list[RerankOutcome]:
        """Check the limits, plan the queries on `reranker` (None: the default model), admit their estimated
        work or refuse it, and run the plans."""
        reranker = reranker or self.reranker
        queue = self.queue(reranker.name)
        queue.config.check_limits(queries)
        if not reranker.loaded:
            await reranker.load()  # a first request's model load is not scoring time
        plans = reranker.plan(queries)
        speed = reranker.speed
        seconds = speed.seconds(plans)
        if seconds is not None and seconds > self._budget(queue) and queue.in_flight == 0:
            age = speed.age_s()
            if age is None or age > STALE_SPEED_S:  # a refusal must not rest on an old figure
                await speed.remeasure()
                seconds = speed.seconds(plans)
        queue.speed = speed
        for q in self._queues.values():
            q.reprice()
        if seconds is not None:
            self._admit(queue, seconds)
        ticket = queue.enter(seconds or 0.0, plans)
        timeout = queue.config.request_timeout_s
        try:
            return await asyncio.wait_for(self._run(queue, reranker, plans), timeout)
        except asyncio.TimeoutError:
            metrics.REJECTED.labels("timeout", queue.name).inc()
            raise RequestTimedOut(f"the request took longer than request_timeout_s ({timeout}s)") from None
        finally:
            queue.leave(ticket)

    def finish_seconds(self, queue: ModelQueue, seconds: float) -> float:
        """When `seconds` more of `queue`'s work would be done, with the work already admitted: under weighted
        fair sharing, while the runtime does the X seconds this model has queued (its own included), each other
        model B takes up to X * weight_B / weight of it: its queued work, or, when more, the share of the
        runtime its batches held recently (a stream of small requests queues little at any moment but keeps
        coming); and a batch already running is not pre-empted."""
        own = queue.queued_s + seconds
        others = [q for q in self._queues.values() if q is not queue and (q.in_flight or q.busy_share)]
        held = min(MOST_HELD_BY_OTHERS, sum(q.busy_share for q in others))
        shared = sum(
            min(max(q.queued_s, own * q.busy_share / (1 - held)), own * q.config.weight / queue.config.weight)
            for q in others
        )
        running = max((q.batch_s for q in others), default=0.0)
        return own + shared + running

    @staticmethod
    def _budget(queue: ModelQueue) -> float:
        return ADMIT_WITHIN * queue.config.request_timeout_s

    def _admit(self, queue: ModelQueue, seconds: float) -> None:
        """LimitExceeded when the work alone cannot finish before the model's deadline; Overloaded when it
        cannot with the work queued before it."""
        timeout = queue.config.request_timeout_s
        budget = self._budget(queue)
        if seconds > budget:
            metrics.REJECTED.labels("too_large", queue.name).inc()
            raise LimitExceeded(
                f"this request is about {seconds:.1f}s of work for {queue.name!r} at its measured speed; it "
                f"cannot finish within request_timeout_s ({timeout}s) even alone: send fewer or shorter "
                "documents",
                limit="request_timeout_s",
                value=round(timeout),
            )
        finish_s = self.finish_seconds(queue, seconds)
        if finish_s <= budget:
            return
        metrics.REJECTED.labels("overloaded", queue.name).inc()
        busy = sum(q.queued_s for q in self._queues.values())
        streams = ", ".join(
            f"{q.name!r} held {q.busy_share:.0%} of the runtime"
            for q in self._queues.values()
            if q is not queue and q.busy_share >= 0.01
        )
        raise Overloaded(
            f"{self.in_flight} requests hold about {busy:.1f}s of work ({queue.in_flight} of them for "
            f"{queue.name!r}, {queue.queued_s:.1f}s){' and recently ' + streams if streams else ''}; with this "
            f"request's {seconds:.1f}s they would not finish within request_timeout_s ({timeout}s)",
            retry_after=finish_s - budget,  # when enough of the queue has drained; the HTTP layer rounds up
        )

    async def _run(
        self, queue: ModelQueue, reranker: Reranker, plans: Sequence[RequestPlan]
    ) -> list[RerankOutcome]:
        async with queue.slots():
            return await reranker.run(plans)
