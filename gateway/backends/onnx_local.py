"""Local ONNX Runtime scorer (CPU or CUDA execution provider).

Sessions are tuned for throughput on few cores: full graph optimisation, the CPU arena on. One lane runs the
batches of every CPU session (so models share the cores by weight, never by who floods first): a few batches
at once (`RERANKER_CPU_CONCURRENCY`, 2), each session on its share of the cores (intra-op threads = cores / 2),
scheduled by weighted fair queuing across models (`FairLane`). On 2 cores two one-thread batches side by side
beat one two-thread batch (onnxruntime's threads meet at every node; two two-thread batches at once were slower
still); a lone batch runs on its share. `session.run` releases the GIL, so the event loop keeps serving
meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gateway import denormals, metrics
from gateway.domain import BatchScores, EncodedBatch
from gateway.errors import BackendFailed
from gateway.heap import release_heap  # what batches free outside the sessions' arenas goes back to the OS

log = logging.getLogger(__name__)

# The arena's own refusal ("BFCArena::AllocateRawInternal ... Available memory of N is smaller than requested
# bytes of M") is what onnxruntime-gpu 1.31 raised on an H200 under a gpu_mem_limit (`make gpu-check`).
_CUDA_OOM = re.compile(
    r"out of memory|CUDNN_STATUS_ALLOC_FAILED|Failed to allocate memory|OOM|BFCArena::AllocateRaw"
    r"|Available memory of \d+ is smaller than requested bytes",
    re.I,
)
_CUDA_ERROR = re.compile(r"CUDA|CUBLAS|CUDNN|cudaError", re.I)


class ScorerFailure(BackendFailed):
    """An ONNX Runtime error, with a short machine-readable reason ("cuda_oom", "cuda_error", "runtime").

    A backend failure like any other: the fallback serves it, and where none can, the client gets 424 with
    this message; ONNX Runtime's own text goes to the log, not to the client.
    """


class SessionLike(Protocol):
    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, Any]) -> list[Any]: ...
    def get_inputs(self) -> list[Any]: ...
    def get_outputs(self) -> list[Any]: ...
    def get_providers(self) -> list[str]: ...


def classify_failure(exc: BaseException, *, on_gpu: bool) -> str:
    text = str(exc)
    if on_gpu and _CUDA_OOM.search(text):
        return "cuda_oom"
    if on_gpu and _CUDA_ERROR.search(text):
        return "cuda_error"
    return "runtime"


def make_session(
    path: Path,
    *,
    device: str,
    threads: int,
    device_id: int = 0,
    gpu_mem_limit_bytes: int | None = None,
    cpu_arena: bool = True,
    flush_denormals: bool = True,
) -> SessionLike:
    """An InferenceSession tuned for this service; `device` "cuda" asks for the CUDA provider first
    (`gpu_mem_limit_bytes`: a cap on its arena, which `make gpu-check` uses to force the OOM path; `cpu_arena`
    off only for `python -m bench.cpu_kernels`, which measures both; `flush_denormals`: its own threads flush
    denormals to zero, gateway/denormals.py)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # Shapes change with every batch: memory patterns are never reused. The CPU arena is kept: a batch's
    # intermediate tensors reuse its blocks instead of fresh pages from malloc (a ModernBERT-base int8 pair of
    # 512 tokens ran 9% faster with it, a MiniLM one 13%), and a CPU batch is bounded by the token budget, so
    # the arena's peak is too (that ModernBERT process peaked 44 MB lower with it than without).
    opts.enable_mem_pattern = False
    opts.enable_cpu_mem_arena = cpu_arena
    # Spin-waiting worker threads doubled the CPU time per pair on a shared 2-core host for no gain.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.set_denormal_as_zero", "1" if flush_denormals else "0")
    providers: list[Any]
    if device == "cuda":
        _preload_cuda_libraries(ort)
        cuda: dict[str, Any] = {"device_id": device_id, "arena_extend_strategy": "kSameAsRequested"}
        if gpu_mem_limit_bytes is not None:
            cuda["gpu_mem_limit"] = str(gpu_mem_limit_bytes)
        providers = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


def _preload_cuda_libraries(ort: Any) -> None:
    """Where CUDA and cuDNN come from pip wheels (nvidia-*-cu1x) rather than the system, onnxruntime-gpu finds
    them only once they are loaded (`preload_dlls`, onnxruntime >= 1.21); without this its CUDA session falls
    back to the CPU silently. A failure leaves the system's libraries to be found the usual way."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # missing wheels, a driver that does not load: the session says what it got
        log.info("onnxruntime.preload_dlls() failed: %s", exc)


@dataclass
class _Job:
    fn: Callable[[EncodedBatch], np.ndarray]
    batch: EncodedBatch
    future: Future[tuple[np.ndarray, float]]
    submitted: float
    width: int = 0  # the workers it took when it started


class LaneShare:
    """One model's place in a `FairLane`: its queue of batches, its weight, the service it has received.

    `served_s` is the lane time its batches took; `virtual` that time divided by the weight (the scheduler's
    clock for this model), lifted to the busy models' level when it comes back from idle (so time spent idle
    is not saved up to starve the others later)."""

    def __init__(self, lane: FairLane, model: str, weight: float, width: int = 1) -> None:
        self.lane = lane
        self.model = model
        self.weight = weight
        # The lane's workers one of its batches takes (its session runs on that share of the cores).
        self.width = width
        self.queue: deque[_Job] = deque()
        self.served_s = 0.0
        self.virtual = 0.0
        self.batches = 0
        self.closed = False

    async def run_timed(
        self, fn: Callable[[EncodedBatch], np.ndarray], batch: EncodedBatch
    ) -> tuple[np.ndarray, float]:
        """`fn(batch)` on the lane's thread when this model's turn comes; the result and the seconds the batch
        waited. Cancelling the caller drops the batch if it has not started."""
        future = self.lane.submit(self, fn, batch)
        self.lane.pending += 1
        try:
            return await asyncio.wrap_future(future)
        finally:
            self.lane.pending -= 1

    def close(self) -> None:
        """Drop this model's queued batches (its scorer closes); the lane stops when no model is left on it."""
        self.lane.leave(self)


class FairLane:
    """`workers` inference threads shared by the sessions that must share the cores (the CPU models), scheduled
    by weighted fair queuing of batches: the next batch comes from the model with the least weighted service
    received (`LaneShare.virtual`) among those with batches waiting, ties to the one that waited longest.
    A model's burst therefore waits behind at most the batches that are running, never behind another model's
    whole queue; while several are busy each gets lane time in proportion to its weight.

    More than one worker runs that many batches at once (of one model or of several): a session's `run` is
    thread-safe, and on few cores two batches side by side, each on its share of the cores, keep them busier
    than one batch split over them (ONNX Runtime's intra-op threads meet at every node). A share's `width` is
    how many of those places one of its batches takes: a model whose session runs on every core (width =
    workers) runs its batches alone, so another model's batch waits for at most one of them. The batch next
    in fair order that does not fit beside the running ones is waited for, not overtaken.

    It returns freed heap memory to the OS when it runs dry, and every `TRIM_EVERY` batches of a long queue
    (trimming after every batch would make the next one page-fault its buffers in again; a session's own
    intermediate tensors stay in its CPU arena, see `make_session`). `served` keeps the
    order the last `HISTORY` batches ran in, by model (the fairness tests read it). Its workers flush denormals
    to zero unless `flush_denormals` is off (gateway/denormals.py): a one-thread session computes on them.
    """

    TRIM_EVERY = 16
    HISTORY = 4096

    def __init__(
        self, name: str, *, trim_when_idle: bool, workers: int = 1, flush_denormals: bool = True
    ) -> None:
        if workers < 1:
            raise ValueError(f"a lane needs at least one worker, not {workers}")
        self.name = name
        self.trim_when_idle = trim_when_idle
        self.workers = workers
        self.flush_denormals = flush_denormals
        self.pending = 0  # batches submitted by callers still waiting for their result
        self.served: deque[str] = deque(maxlen=self.HISTORY)
        self._shares: dict[str, LaneShare] = {}
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._running: dict[LaneShare, int] = {}  # batches in service, by model
        self._taken = 0  # the workers the running batches take (their shares' widths)
        self._clock = 0.0  # the virtual service of the last batch picked
        self._since_trim = 0

    def share(self, model: str, weight: float = 1.0, width: int = 1) -> LaneShare:
        """`model`'s place on this lane (made on first use; a later call sets its weight and width). `width`:
        the workers one of its batches takes (1 to `workers`)."""
        if not 1 <= width <= self.workers:
            raise ValueError(f"a batch of {model!r} cannot take {width} of the lane's {self.workers} workers")
        with self._cond:
            share = self._shares.get(model)
            if share is None or share.closed:
                share = self._shares[model] = LaneShare(self, model, weight, width)
            share.weight, share.width = weight, width
            return share

    async def run_timed(
        self, fn: Callable[[EncodedBatch], np.ndarray], batch: EncodedBatch
    ) -> tuple[np.ndarray, float]:
        """`fn(batch)` as a model with no name of its own (a lane used by one session)."""
        return await self.share("").run_timed(fn, batch)

    def submit(
        self, share: LaneShare, fn: Callable[[EncodedBatch], np.ndarray], batch: EncodedBatch
    ) -> Future[tuple[np.ndarray, float]]:
        future: Future[tuple[np.ndarray, float]] = Future()
        with self._cond:
            if share.closed:
                raise RuntimeError(f"the lane share of {share.model!r} is closed")
            if not share.queue and not self._running.get(share):
                # Back from idle: level with the busy models, not below them.
                busy = [
                    s.virtual
                    for s in self._shares.values()
                    if s is not share and (s.queue or self._running.get(s))
                ]
                share.virtual = max(share.virtual, min(busy, default=self._clock))
            share.queue.append(_Job(fn, batch, future, time.perf_counter()))
            metrics.LANE_QUEUED.labels(share.model).set(len(share.queue))
            self._threads = [t for t in self._threads if t.is_alive()]
            if len(self._threads) < self.workers:
                thread = threading.Thread(
                    target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            self._cond.notify()
        return future

    def _next(self) -> tuple[LaneShare, _Job] | None:
        """Under the lock: the next batch by weighted fair queuing; None once every model has left."""
        while True:
            waiting = [s for s in self._shares.values() if s.queue]
            if waiting:
                share = min(waiting, key=lambda s: (s.virtual, s.queue[0].submitted))
                if self._taken + share.width > self.workers:  # not beside the running batches: wait for them
                    self._cond.wait()
                    continue
                job = share.queue.popleft()
                job.width = share.width
                self._taken += job.width
                metrics.LANE_QUEUED.labels(share.model).set(len(share.queue))
                self._running[share] = self._running.get(share, 0) + 1
                self._clock = share.virtual
                return share, job
            if not self._shares or all(s.closed for s in self._shares.values()):
                return None
            self._cond.wait()

    def _work(self) -> None:
        denormals.flush_denormals(self.flush_denormals)  # as set, whatever the thread inherited
        while True:
            with self._cond:
                picked = self._next()
            if picked is None:
                return
            share, job = picked
            if not job.future.set_running_or_notify_cancel():  # its caller left while it waited
                with self._cond:
                    self._done(share, job)
                continue
            self.served.append(share.model)
            started = time.perf_counter()
            failure: BaseException | None = None
            try:
                logits = job.fn(job.batch)
            except BaseException as exc:
                failure = exc
            elapsed = time.perf_counter() - started
            with self._cond:  # charged before the caller hears back, so its counters are current
                self._done(share, job)
                share.served_s += elapsed
                share.virtual += elapsed / share.weight
                share.batches += 1
                idle = not self._running and not any(s.queue for s in self._shares.values())
                self._since_trim += 1
                trim = self.trim_when_idle and (idle or self._since_trim >= self.TRIM_EVERY)
                if trim:
                    self._since_trim = 0
            metrics.LANE_BUSY.labels(share.model).inc(elapsed)
            metrics.LANE_BATCHES.labels(share.model).inc()
            if failure is not None:
                job.future.set_exception(failure)
            else:
                job.future.set_result((logits, started - job.submitted))
            if trim:
                release_heap()

    @property
    def alive_workers(self) -> int:
        """The lane's threads still running (0 once every model has left and the last batch ended)."""
        with self._cond:
            return sum(t.is_alive() for t in self._threads)

    def _done(self, share: LaneShare, job: _Job) -> None:
        """Under the lock: `job`, a batch of `share`, left service."""
        left = self._running.pop(share) - 1
        if left:
            self._running[share] = left
        self._taken -= job.width
        self._cond.notify_all()  # a worker waiting for room may start now

    def leave(self, share: LaneShare) -> None:
        with self._cond:
            share.closed = True
            while share.queue:
                share.queue.popleft().future.cancel()
            metrics.LANE_QUEUED.labels(share.model).set(0)
            self._cond.notify_all()

    def close(self) -> None:
        """Every model leaves: queued batches are dropped, the thread ends after the running one."""
        with self._cond:
            shares = list(self._shares.values())
        for share in shares:
            self.leave(share)


class OnnxScorer:
    """Scorer over one ONNX Runtime session (or anything with the same `run`)."""

    def __init__(
        self,
        session: SessionLike,
        *,
        name: str,
        lane: LaneShare | None = None,
        max_batch_size: int | None = None,
        model: str = "",
        flush_denormals: bool = True,
    ) -> None:
        self.session = session
        self.name = name
        self.model = model  # the metrics' `model` label: the folder of the model this session runs
        self.on_gpu = name.endswith("cuda")
        self.input_names: tuple[str, ...] = tuple(i.name for i in session.get_inputs())
        outputs = [o.name for o in session.get_outputs()]
        self._output = "logits" if "logits" in outputs else outputs[0]
        self.max_batch_size = max_batch_size
        # its own lane when none is given (a CUDA session's), flushing as the CPU lane does
        self._lane = lane or FairLane(
            f"ort-{name}", trim_when_idle=not self.on_gpu, flush_denormals=flush_denormals
        ).share(model)

    @property
    def provider(self) -> str:
        return str(self.session.get_providers()[0])

    def run_sync(self, batch: EncodedBatch) -> np.ndarray:
        """Blocking inference: float32 logits, one per row."""
        try:
            logits = self._infer(batch)
        except Exception as exc:
            reason = classify_failure(exc, on_gpu=self.on_gpu)
            metrics.SCORER_CALLS.labels(self.name, "inproc", reason, self.model).inc()
            log.warning("%s failed on a batch of %d (%s): %s", self.name, batch.size, reason, exc)
            raise ScorerFailure(f"{self.name} inference failed ({reason})", reason=reason) from exc
        metrics.SCORER_CALLS.labels(self.name, "inproc", "ok", self.model).inc()
        return logits

    def _infer(self, batch: EncodedBatch) -> np.ndarray:
        """The session's part of `run_sync` (a subclass runs its graph its own way)."""
        feed = {name: batch.inputs[name] for name in self.input_names}
        out = np.asarray(self.session.run([self._output], feed)[0], dtype=np.float32)
        return out.reshape(out.shape[0], -1)[:, 0]

    async def score(self, batch: EncodedBatch) -> BatchScores:
        logits, queued = await self._lane.run_timed(self.run_sync, batch)
        return BatchScores(logits=logits, backend=self.name, queued_s=queued)

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        self._lane.close()  # idempotent; drops this model's queued batches, the lane ends with its last model
