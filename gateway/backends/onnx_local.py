"""Local ONNX Runtime scorer (CPU or CUDA execution provider).

Sessions are tuned for throughput on few cores: intra-op threads = cores, one inference at a time per
lane (a single-thread executor shared by the CPU sessions, so two models never fight over the cores),
full graph optimisation. `session.run` releases the GIL, so the event loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gateway import metrics
from gateway.domain import BatchScores, EncodedBatch
from gateway.errors import BackendFailed

log = logging.getLogger(__name__)

_CUDA_OOM = re.compile(r"out of memory|CUDNN_STATUS_ALLOC_FAILED|Failed to allocate memory|OOM", re.I)
_CUDA_ERROR = re.compile(r"CUDA|CUBLAS|CUDNN|cudaError", re.I)


def _malloc_trim() -> Callable[[], None]:
    """glibc keeps the freed activation buffers of a big batch (its mmap threshold grows after the first
    one), so RSS would stay at the peak of the largest batch ever run; malloc_trim hands them back."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return lambda: None

    def release() -> None:
        trim(0)

    return release


release_heap = _malloc_trim()


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
    path: Path, *, device: str, threads: int, device_id: int = 0, gpu_mem_limit_bytes: int | None = None
) -> SessionLike:
    """An InferenceSession tuned for this service; `device` "cuda" asks for the CUDA provider first
    (`gpu_mem_limit_bytes`: a cap on its arena, which `make gpu-check` uses to force the OOM path)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # Shapes change with every batch: memory patterns are never reused, and the CPU arena keeps the peak
    # of the largest batch forever. Without them RSS follows the batch actually running.
    opts.enable_mem_pattern = False
    opts.enable_cpu_mem_arena = False
    # Spin-waiting worker threads doubled the CPU time per pair on a shared 2-core host for no gain.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
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


class Lane:
    """One inference thread shared by the sessions that must not run at once (the CPU models).

    It returns freed heap memory to the OS when it runs dry, and every `TRIM_EVERY` batches of a long
    queue (trimming after every batch would make the next one page-fault its buffers in again).
    """

    TRIM_EVERY = 16

    def __init__(self, name: str, *, trim_when_idle: bool) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.trim_when_idle = trim_when_idle
        self.pending = 0
        self._since_trim = 0

    async def run_timed(
        self, fn: Callable[[EncodedBatch], np.ndarray], batch: EncodedBatch
    ) -> tuple[np.ndarray, float]:
        """`fn(batch)` on the lane's thread, and the seconds the batch waited for the thread."""
        loop = asyncio.get_running_loop()
        self.pending += 1
        submitted = time.perf_counter()

        def timed() -> tuple[np.ndarray, float]:
            queued = time.perf_counter() - submitted
            return fn(batch), queued

        try:
            return await loop.run_in_executor(self.executor, timed)
        finally:
            self.pending -= 1
            self._since_trim += 1
            if self.trim_when_idle and (self.pending == 0 or self._since_trim >= self.TRIM_EVERY):
                self._since_trim = 0
                with contextlib.suppress(RuntimeError):  # the lane was shut down meanwhile
                    loop.run_in_executor(self.executor, release_heap)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class OnnxScorer:
    """Scorer over one ONNX Runtime session (or anything with the same `run`)."""

    def __init__(
        self,
        session: SessionLike,
        *,
        name: str,
        lane: Lane | None = None,
        max_batch_size: int | None = None,
    ) -> None:
        self.session = session
        self.name = name
        self.on_gpu = name.endswith("cuda")
        self.input_names: tuple[str, ...] = tuple(i.name for i in session.get_inputs())
        outputs = [o.name for o in session.get_outputs()]
        self._output = "logits" if "logits" in outputs else outputs[0]
        self.max_batch_size = max_batch_size
        self._lane = lane or Lane(f"ort-{name}", trim_when_idle=not self.on_gpu)

    @property
    def provider(self) -> str:
        return str(self.session.get_providers()[0])

    def run_sync(self, batch: EncodedBatch) -> np.ndarray:
        """Blocking inference: float32 logits, one per row."""
        feed = {name: batch.inputs[name] for name in self.input_names}
        try:
            out = self.session.run([self._output], feed)[0]
        except Exception as exc:
            reason = classify_failure(exc, on_gpu=self.on_gpu)
            metrics.SCORER_CALLS.labels(backend=self.name, protocol="inproc", outcome=reason).inc()
            log.warning("%s failed on a batch of %d (%s): %s", self.name, batch.size, reason, exc)
            raise ScorerFailure(f"{self.name} inference failed ({reason})", reason=reason) from exc
        metrics.SCORER_CALLS.labels(backend=self.name, protocol="inproc", outcome="ok").inc()
        logits = np.asarray(out, dtype=np.float32)
        return logits.reshape(logits.shape[0], -1)[:, 0]

    async def score(self, batch: EncodedBatch) -> BatchScores:
        logits, queued = await self._lane.run_timed(self.run_sync, batch)
        return BatchScores(logits=logits, backend=self.name, queued_s=queued)

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        self._lane.close()  # idempotent; a shared lane drops its queued batches with its first user
