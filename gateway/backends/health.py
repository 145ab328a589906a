"""Whether a backend takes batches: the one up/down state machine of the runtimes, and its re-probe.

A call that fails in a way that says the backend itself is unwell marks it down; callers skip it while it is
down (no time wasted on a dead server). While down, a caller's `maybe_reprobe()` starts one background probe
every `reprobe_s` seconds: a readiness call bounded by `probe_timeout_s`. When a probe answers ready, the
backend is marked up and takes batches again. Used for the primary of a `MarkDownFallback` (Triton ->
local ONNX Runtime) and for each endpoint of a `TritonPool`.

Probe bounds nest, and each owner passes its own: a `MarkDownFallback` over a pool bounds the pool's
`ready()`, which probes every endpoint at once, each under its own bound. The inner bound must stay below
the outer one, or one slow endpoint would hide the others' answers:

- `ENDPOINT_PROBE_TIMEOUT_S` (1.5 s): one Triton endpoint's readiness call (the `TritonPool` default);
- `PRIMARY_PROBE_TIMEOUT_S` (2.0 s): a fallback composition's bound on its primary's readiness.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from gateway.backends.base import BatchScores, EncodedBatch, Scorer, cancelled_by_caller
from gateway.errors import BackendFailed

log = logging.getLogger(__name__)

ENDPOINT_PROBE_TIMEOUT_S = 1.5
PRIMARY_PROBE_TIMEOUT_S = 2.0
REPROBE_S = 5.0


def failure_reason(exc: BaseException) -> str:
    """A short machine-readable reason for a failed call (the label of the fallback and endpoint metrics)."""
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


class Health:
    """Up or down, why, and when to probe again, for one backend whose readiness `ready()` answers.

    `on_change(up)` is called when the state flips (a metrics hook: the Triton pool's endpoint gauge).
    """

    def __init__(
        self,
        name: str,
        ready: Callable[[], Awaitable[bool]],
        *,
        reprobe_s: float = REPROBE_S,
        probe_timeout_s: float = PRIMARY_PROBE_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.name = name
        self.reprobe_s = reprobe_s
        self.probe_timeout_s = probe_timeout_s
        self.up = True
        self.last_error: str | None = None
        self.next_probe = 0.0
        self.probing = False
        self._ready = ready
        self._clock = clock
        self._on_change = on_change
        self._task: asyncio.Task[bool] | None = None

    def mark_down(self, error: str | None = None) -> None:
        """Skip the backend; probe it again in `reprobe_s`. `error` (when given) becomes `last_error`."""
        if error is not None:
            self.last_error = error
        was_up, self.up = self.up, False
        self.next_probe = self._clock() + self.reprobe_s
        if was_up:
            log.warning(
                "%s marked down (%s); re-probed every %.1fs", self.name, self.last_error, self.reprobe_s
            )
            if self._on_change is not None:
                self._on_change(False)

    def mark_up(self) -> None:
        was_up, self.up = self.up, True
        if not was_up:
            log.info("%s is ready again: it takes batches", self.name)
            if self._on_change is not None:
                self._on_change(True)

    async def check(self) -> bool:
        """One readiness call bounded by `probe_timeout_s`. Never raises (a failure is kept in `last_error`);
        leaves up/down and the probe schedule alone."""
        try:
            return bool(await asyncio.wait_for(self._ready(), self.probe_timeout_s))
        except Exception as exc:
            self.last_error = f"probe: {str(exc) or type(exc).__name__}"[:300]
            return False

    async def probe(self) -> bool:
        """A readiness call whose answer sets the state: ready -> up; not ready -> down until the next probe."""
        self.probing = True
        try:
            ok = await self.check()
        finally:
            self.probing = False
        if ok:
            self.mark_up()
        elif self.up:
            self.mark_down(self.last_error or "probe: not ready")
        else:
            self.next_probe = self._clock() + self.reprobe_s
        return ok

    def maybe_reprobe(self) -> None:
        """While down and due, start one probe in the background (never two at once)."""
        if not self.up and not self.probing and self._clock() >= self.next_probe:
            self.probing = True
            self._task = asyncio.get_running_loop().create_task(self.probe())

    def close(self) -> None:
        """Stop a background probe still running."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
