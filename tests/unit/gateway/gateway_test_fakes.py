"""Injectable stand-ins for the GPU: a probe's answer and a "CUDA" session that runs out of memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.backends.gpu_probe import FixedProbe, GpuStatus
from gateway.backends.onnx_local import make_session


class OomCudaSession:
    """Claims the CUDA provider; raises ORT's CUDA OOM text on batches above `ok_rows` rows."""

    def __init__(self, path: Path, *, threads: int = 1, ok_rows: int = 0) -> None:
        self._inner = make_session(path, device="cpu", threads=threads)
        self.ok_rows = ok_rows
        self.calls: list[int] = []

    def run(self, output_names: Any, feed: dict[str, Any]) -> Any:
        rows = int(next(iter(feed.values())).shape[0])
        self.calls.append(rows)
        if rows > self.ok_rows:
            raise RuntimeError(
                "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running "
                "MatMul node. CUDA failure 2: out of memory ; GPU=0"
            )
        return self._inner.run(output_names, feed)

    def get_inputs(self) -> Any:
        return self._inner.get_inputs()

    def get_outputs(self) -> Any:
        return self._inner.get_outputs()

    def get_providers(self) -> list[str]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def probe(free_mb: int) -> FixedProbe:
    return FixedProbe(GpuStatus(True, free_mb=free_mb, total_mb=81_559, name="Injected H100"))


def oom_session_factory(ok_rows: int = 0, sessions: list[OomCudaSession] | None = None):
    def factory(path: Path, *, device: str, threads: int) -> Any:
        assert device == "cuda"
        session = OomCudaSession(path, threads=threads, ok_rows=ok_rows)
        if sessions is not None:
            sessions.append(session)
        return session

    return factory


def silent_cpu_session_factory(path: Path, *, device: str, threads: int) -> Any:
    """What onnxruntime-gpu does without CUDA libraries: a session that quietly runs on the CPU."""
    return make_session(path, device="cpu", threads=threads)
