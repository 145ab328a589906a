"""Scoring over several Triton replicas: client-side balancing, health, re-probing, DNS re-resolution.

gRPC keeps one long-lived HTTP/2 connection per channel, so behind a Kubernetes ClusterIP Service every call
of a gateway lands on the one pod its connection was pinned to. The chart's headless Service resolves to
every ready Triton pod instead; this pool resolves `RERANKER_TRITON_URL` (comma-separated host:port entries;
a name stands for all its addresses, re-resolved every `resolve_s`), keeps one scorer per address, and sends
each batch to a healthy endpoint: the one with the fewest rows in flight (ties in turn), or plainly in turn.

A call that fails takes its endpoint out (each endpoint's `Health`, gateway/backends/health.py: re-probed
every `reprobe_s`, each probe bounded by `probe_timeout_s`, back when it answers ready) and the batch is
retried on the next healthy endpoint. Only when every endpoint has failed does the pool raise
`BackendFailed`, which the `MarkDownFallback` around it turns into local scoring.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway import metrics
from gateway.backends.base import BatchScores, EncodedBatch, Scorer
from gateway.backends.health import ENDPOINT_PROBE_TIMEOUT_S, REPROBE_S, Health, attempt, failure_reason
from gateway.errors import BackendFailed

log = logging.getLogger(__name__)

Balance = Literal["least_outstanding", "round_robin"]
Resolver = Callable[[str, int], Awaitable[list[str]]]
# Failures that say the endpoint itself is unwell (not the batch): it is taken out until a probe answers.
_TAKE_OUT = frozenset({"unavailable", "timeout", "cancelled", "mismatch"})


def _split(entry: str) -> tuple[str, int]:
    host, _, port = entry.rpartition(":")
    return host, int(port)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


async def resolve(host: str, port: int) -> list[str]:
    """Every address of `host` as host:port, IPv4 first-class: a dual-stack name lists each pod twice
    (A and AAAA), so IPv6 addresses are used only when the name has no IPv4 one."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    v4 = [str(info[4][0]) for info in infos if info[0] == socket.AF_INET]
    v6 = [str(info[4][0]) for info in infos if info[0] == socket.AF_INET6]
    found = [f"{ip}:{port}" for ip in v4] if v4 else [f"[{ip}]:{port}" for ip in v6]
    return list(dict.fromkeys(found))


@dataclass
class Endpoint:
    """One Triton replica and what the pool knows about it."""

    address: str  # host:port the client connects to
    source: str  # the configured entry it came from
    scorer: Scorer
    health: Health
    in_flight: int = 0  # rows of the batches running on it now
    calls: int = 0
    failures: int = 0

    @property
    def up(self) -> bool:
        return self.health.up

    @property
    def last_error(self) -> str | None:
        return self.health.last_error

    def describe(self) -> dict[str, Any]:
        return {
            "endpoint": self.address,
            "source": self.source,
            "state": "up" if self.up else "out",
            "in_flight_rows": self.in_flight,
            "calls": self.calls,
            "failures": self.failures,
            "last_error": self.last_error,
        }


class TritonPool:
    """A `Scorer` over the Triton endpoints of one model; `make_scorer(address)` builds each one's client."""

    def __init__(
        self,
        entries: Sequence[str],
        make_scorer: Callable[[str], Scorer],
        *,
        name: str,
        input_names: Sequence[str],
        balance: Balance = "least_outstanding",
        reprobe_s: float = REPROBE_S,
        probe_timeout_s: float = ENDPOINT_PROBE_TIMEOUT_S,
        resolve_s: float = 30.0,
        resolver: Resolver = resolve,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not entries:
            raise ValueError("a Triton pool needs at least one endpoint")
        if balance not in ("least_outstanding", "round_robin"):
            raise ValueError(f"balance must be least_outstanding or round_robin, got {balance!r}")
        self.entries = list(entries)
        self.name = name
        self.input_names = tuple(input_names)
        self.max_batch_size: int | None = None  # each endpoint's scorer splits to its server's limit
        self.balance = balance
        self.reprobe_s = reprobe_s
        self.probe_timeout_s = probe_timeout_s
        self.resolve_s = resolve_s
        self._make_scorer = make_scorer
        self._resolver = resolver
        self._clock = clock
        self._names = [entry for entry in self.entries if not _is_address(_split(entry)[0])]
        self._endpoints: dict[str, Endpoint] = {}
        self._resolved_at: float | None = None
        self._resolve_lock = asyncio.Lock()
        self._resolve_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._turn = itertools.count()
        if not self._names:  # addresses only: nothing to resolve, ever
            self._apply([(entry, entry) for entry in self.entries])
            self._resolved_at = float("inf")

    def __repr__(self) -> str:
        return f"TritonPool({', '.join(self.entries)}, {self.balance})"

    @property
    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints.values())

    # --- endpoints from the configuration and DNS ---------------------------------------------
    async def _refresh(self) -> None:
        """Resolve before the first call; later re-resolve in the background every `resolve_s`."""
        if self._resolved_at is None:
            async with self._resolve_lock:
                if self._resolved_at is None:
                    await self._resolve()
        elif self._resolve_task is None and self._clock() >= self._resolved_at + self.resolve_s:
            self._resolve_task = self._spawn(self._resolve())

    async def _resolve(self) -> None:
        try:
            pairs: list[tuple[str, str]] = []
            for entry in self.entries:
                host, port = _split(entry)
                if _is_address(host):
                    pairs.append((entry, entry))
                    continue
                try:
                    found = await self._resolver(host, port)
                except OSError as exc:
                    log.warning("could not resolve Triton endpoint %s: %s", entry, exc)
                    found = []
                if not found:  # keep what the name had; never resolved: let the client library try the name
                    found = [e.address for e in self._endpoints.values() if e.source == entry] or [entry]
                pairs.extend((address, entry) for address in found)
            self._apply(pairs)
        finally:
            self._resolved_at = self._clock()
            self._resolve_task = None

    def _apply(self, pairs: list[tuple[str, str]]) -> None:
        current = self._endpoints
        updated: dict[str, Endpoint] = {}
        for address, source in pairs:
            if address in updated:
                continue
            endpoint = current.get(address)
            if endpoint is None:
                endpoint = self._endpoint(address, source)
                metrics.TRITON_ENDPOINT_UP.labels(address).set(1)
                if current:
                    log.info("Triton endpoint %s added (from %s)", address, source)
            updated[address] = endpoint
        self._endpoints = updated
        for address, endpoint in current.items():
            if address not in updated:
                log.info("Triton endpoint %s removed: %s no longer resolves to it", address, endpoint.source)
                metrics.TRITON_ENDPOINT_UP.labels(address).set(0)
                endpoint.health.close()
                self._spawn(endpoint.scorer.close())  # waits for its calls in flight (TritonScorer)

    def _endpoint(self, address: str, source: str) -> Endpoint:
        def gauge(up: bool) -> None:
            metrics.TRITON_ENDPOINT_UP.labels(address).set(1 if up else 0)

        scorer = self._make_scorer(address)
        health = Health(
            f"Triton endpoint {address}",
            scorer.ready,
            reprobe_s=self.reprobe_s,
            probe_timeout_s=self.probe_timeout_s,
            clock=self._clock,
            on_change=gauge,
        )
        return Endpoint(address=address, source=source, scorer=scorer, health=health)

    def _spawn(self, awaitable: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- choice, failure, re-probe ------------------------------------------------------------
    def _pick(self, tried: set[str]) -> Endpoint | None:
        healthy = [e for e in self._endpoints.values() if e.up and e.address not in tried]
        if not healthy:
            return None
        start = next(self._turn) % len(healthy)
        in_turn = healthy[start:] + healthy[:start]
        if self.balance == "round_robin":
            return in_turn[0]
        return min(in_turn, key=lambda e: e.in_flight)  # the first of the least loaded: ties go in turn

    def _failed(self, endpoint: Endpoint, reason: str, exc: BaseException) -> None:
        endpoint.failures += 1
        endpoint.health.last_error = f"{reason}: {exc}"[:300]
        metrics.TRITON_ENDPOINT_CALLS.labels(endpoint.address, reason).inc()
        metrics.TRITON_ENDPOINT_FAILURES.labels(endpoint.address, reason).inc()
        if reason in _TAKE_OUT:
            endpoint.health.mark_down()

    # --- Scorer -------------------------------------------------------------------------------
    async def score(self, batch: EncodedBatch) -> BatchScores:
        await self._refresh()
        for each in self._endpoints.values():
            each.health.maybe_reprobe()
        tried: set[str] = set()
        failures: list[str] = []
        reason = "unavailable"
        while (endpoint := self._pick(tried)) is not None:
            tried.add(endpoint.address)
            endpoint.in_flight += batch.size
            metrics.TRITON_ENDPOINT_IN_FLIGHT.labels(endpoint.address).inc(batch.size)
            try:
                result = await attempt(endpoint.scorer, batch)
            except Exception as exc:  # BackendFailed, or anything a scorer let out: try the next one
                reason = failure_reason(exc)
                self._failed(endpoint, reason, exc)
                failures.append(f"{endpoint.address}: {reason}")
                continue
            finally:
                endpoint.in_flight -= batch.size
                metrics.TRITON_ENDPOINT_IN_FLIGHT.labels(endpoint.address).dec(batch.size)
            endpoint.calls += 1
            metrics.TRITON_ENDPOINT_CALLS.labels(endpoint.address, "ok").inc()
            return result
        out = [e.address for e in self._endpoints.values() if not e.up and e.address not in tried]
        detail = "; ".join(failures + ([f"out: {', '.join(out)}"] if out else []))
        raise BackendFailed(
            f"{self.name}: no Triton endpoint could score the batch ({detail})", reason=reason
        )

    async def ready(self) -> bool:
        """Probes every endpoint at once (the answers also put endpoints in or out); True if any is ready."""
        await self._refresh()
        results = await asyncio.gather(*(e.health.probe() for e in self._endpoints.values()))
        return any(results)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "balance": self.balance,
            "configured": self.entries,
            "resolve_s": self.resolve_s if self._names else None,
            "endpoints": [e.describe() for e in self._endpoints.values()],
        }

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        endpoints, self._endpoints = list(self._endpoints.values()), {}
        for endpoint in endpoints:
            endpoint.health.close()
            await endpoint.scorer.close()
