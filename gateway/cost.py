"""What a model's work costs: the measured speed of one loaded model, in tokens per second of its runtime's
service time, and the seconds a request's estimated tokens will take on it.

Each loaded stage (a served cross-encoder, the shared prefilter) has its own `WorkMeter`: it is seeded at load
by a warm-up on synthetic pairs of that model (gateway/pipeline.py) and kept current from every batch the model
runs (gateway/scoring.py), so a decoder's token is never charged at a MiniLM's price. Admission
(gateway/admission.py) turns a request's estimate into seconds with it.

Service time is a batch's time in the runtime, its wait for the inference lane left out (the lane's fair
scheduler hands that time to other models). Batches of one model that run at once (Triton, CUDA) overlap:
the meter counts the union of their service intervals, so concurrency shows as speed, not as extra time.
"""

from __future__ import annotations

import time
from collections import deque

from gateway import metrics


class WorkMeter:
    """Tokens per second of service time of one model, from its batches; older measurements fade (halved
    every `horizon_s` of service time), so the rate follows the machine when other work slows it. It also
    knows what share of the last `recent_s` seconds (wall clock) the model's batches were in service: what a
    model that shares the runtime with it will not get meanwhile."""

    def __init__(self, model: str, *, horizon_s: float = 20.0, recent_s: float = 15.0) -> None:
        self.model = model
        self.horizon_s = horizon_s
        self.recent_s = recent_s
        self._tokens = 0.0
        self._busy_s = 0.0
        self._until = 0.0  # the end of the latest service interval counted (perf_counter seconds)
        self._recent: deque[tuple[float, float]] = deque()  # (finished, busy seconds) within recent_s
        self._recent_busy_s = 0.0
        self._batch_s: float | None = None  # a batch's service time, smoothed
        self.batches = 0
        self.measured_at: float | None = None  # time.monotonic() of the last batch measured

    @property
    def measured(self) -> bool:
        return self._tokens > 0 and self._busy_s > 0

    @property
    def per_second(self) -> float | None:
        """Tokens per second of service time; None until a batch of this model has been measured."""
        return self._tokens / self._busy_s if self.measured else None

    @property
    def batch_seconds(self) -> float:
        """How long one of this model's batches holds the runtime (what another model's batch may wait behind
        it: batches are not pre-empted)."""
        return self._batch_s or 0.0

    def seconds(self, tokens: float) -> float | None:
        """`tokens` of this model's work in seconds of service time (None: not measured yet)."""
        rate = self.per_second
        return None if rate is None else tokens / rate

    def record(self, tokens: int, started: float, finished: float) -> None:
        """A batch of `tokens` (unpadded) that was in service from `started` to `finished` (perf_counter)."""
        if finished <= started or tokens <= 0:
            return
        busy = max(0.0, finished - max(started, self._until))
        self._until = max(self._until, finished)
        self._busy_s += busy
        self._recent.append((finished, busy))
        self._recent_busy_s += busy
        self._forget_before(finished - self.recent_s)
        self._tokens += tokens
        took = finished - started
        self._batch_s = took if self._batch_s is None else 0.8 * self._batch_s + 0.2 * took
        self.batches += 1
        self.measured_at = time.monotonic()
        if self._busy_s > self.horizon_s:
            self._busy_s /= 2
            self._tokens /= 2
        rate = self.per_second
        if rate is not None:
            metrics.WORK_RATE.labels(self.model).set(rate)

    def busy_share(self, now: float | None = None) -> float:
        """The share of the last `recent_s` seconds (perf_counter) this model's batches were in service."""
        now = time.perf_counter() if now is None else now
        self._forget_before(now - self.recent_s)
        return min(1.0, max(0.0, self._recent_busy_s / self.recent_s))

    def _forget_before(self, moment: float) -> None:
        """Drop the batches that finished before `moment` from the recent ones (called by every batch too, so
        a model nobody asks about keeps no more than its last `recent_s` of batches)."""
        while self._recent and self._recent[0][0] < moment:
            self._recent_busy_s -= self._recent.popleft()[1]
        if not self._recent:
            self._recent_busy_s = 0.0

    def reset(self) -> None:
        """Forget what was measured (a new measurement follows)."""
        self._tokens = self._busy_s = 0.0
        self._batch_s = None
        self.measured_at = None

    def reset_to(self, tokens_per_second: float) -> None:
        """Replace what was measured by a known rate (tests; an operator's figure)."""
        self._tokens, self._busy_s = tokens_per_second, 1.0
        self.measured_at = time.monotonic()
        metrics.WORK_RATE.labels(self.model).set(tokens_per_second)

    def age_s(self) -> float | None:
        """Seconds since the last measurement (None: never measured)."""
        return None if self.measured_at is None else time.monotonic() - self.measured_at
