"""Is there a usable GPU, and how much memory is free on it? (NVML; nothing here loads a model.)"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuStatus:
    available: bool  # a GPU is visible AND onnxruntime has the CUDA provider
    free_mb: int | None = None
    total_mb: int | None = None
    name: str | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class GpuProbe(Protocol):
    def probe(self) -> GpuStatus: ...


class NvmlProbe:
    """The real probe: the CUDA provider must be compiled in, and NVML must see device `device_id`."""

    def __init__(self, device_id: int = 0) -> None:
        self.device_id = device_id

    def probe(self) -> GpuStatus:
        try:
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                return GpuStatus(False, reason="onnxruntime has no CUDAExecutionProvider")
        except ImportError:
            return GpuStatus(False, reason="onnxruntime is not installed")
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:  # no driver, no library: the normal case on a CPU machine
            return GpuStatus(False, reason=f"NVML unavailable: {exc}")
        try:
            if pynvml.nvmlDeviceGetCount() <= self.device_id:
                return GpuStatus(False, reason="no GPU visible to NVML")
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.device_id)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            return GpuStatus(True, free_mb=int(mem.free) >> 20, total_mb=int(mem.total) >> 20, name=name)
        except Exception as exc:
            return GpuStatus(False, reason=f"NVML query failed: {exc}")
        finally:
            try:
                pynvml.nvmlShutdown()
            except Exception:
                log.debug("nvmlShutdown failed", exc_info=True)


class FixedProbe:
    """A probe that reports what it was given (tests, or forcing a decision)."""

    def __init__(self, status: GpuStatus) -> None:
        self.status = status

    def probe(self) -> GpuStatus:
        return self.status
