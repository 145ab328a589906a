"""What a load produces: per stage a tokenizer, a scorer, its spec and its measured speed, and where they run."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.backends.base import Scorer, describe_scorer
from gateway.cost import WorkMeter
from gateway.repository import ModelSpec
from gateway.tokenization import PairTokenizer


@dataclass
class ModelStage:
    """One loaded model: `max_length` is the pair length this stage tokenizes to."""

    spec: ModelSpec
    tokenizer: PairTokenizer
    scorer: Scorer
    max_length: int
    variant: str  # the ONNX variant the local runtime loaded ("int8", "fp32", "fp16", ...)
    token_budget: int = 512  # padded tokens per batch for this stage's runtime
    one_row_batches: bool = False  # each pair alone: its score must not depend on its neighbours
    # The variant the primary backend runs when it is not `variant` (Triton's default config: fp32).
    primary_variant: str | None = None
    # each batch holds one query's windows: the scorer computes their shared prompt head once (prefix reuse)
    per_query_batches: bool = False
    meter: WorkMeter = field(init=False)  # this model's speed (gateway/cost.py), labelled by its folder

    def __post_init__(self) -> None:
        self.meter = WorkMeter(self.spec.folder.name)

    @property
    def served_variant(self) -> str:
        """The variant whose logits this stage answers with (its score calibration map is that one's)."""
        return self.primary_variant or self.variant

    @property
    def max_rows(self) -> int | None:
        """Rows per batch this stage's scorer takes at most (1 with one-row batches; None: no bound)."""
        return 1 if self.one_row_batches else self.scorer.max_batch_size

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "model_id": self.spec.model_id,
            "role": self.spec.role,
            "version": self.spec.version,
            "max_length": self.max_length,
            "model_max_length": self.spec.max_length,
            "inputs": list(self.spec.input_names),
            "variant": self.variant,
            **({"primary_variant": self.primary_variant} if self.primary_variant else {}),
            "backend": self.scorer.name,
            "token_budget": self.token_budget,
            "scorer": describe_scorer(self.scorer),
            "one_row_batches": self.one_row_batches,
            "per_query_batches": self.per_query_batches,
            "tokens_per_second": _rounded(self.meter.per_second),
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


@dataclass
class DeviceReport:
    """Where the stages run and why (`/info` -> "device"); `cuda_used` is what code steers by."""

    gpu: dict[str, Any] = field(default_factory=dict)  # the GPU probe's answer
    cuda_used: bool = False
    cuda: str = ""  # "used", or "not used: <why>"
    cpu_variant: dict[str, str] = field(default_factory=dict)  # model -> why a preferred file was passed over
    triton: dict[str, Any] | None = None
    load_seconds: float = 0.0
    cpu_lane: dict[str, Any] = field(default_factory=dict)  # the cross-encoder's CPU session: threads, width

    @property
    def where(self) -> str:
        """Where the cross-encoder runs: "triton" (local fallback behind it), "cuda" or "cpu"."""
        return "triton" if self.triton is not None else "cuda" if self.cuda_used else "cpu"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"gpu": dict(self.gpu)}
        if self.cuda:
            out["cuda"] = self.cuda
        if self.cpu_variant:
            out["cpu_variant"] = dict(self.cpu_variant)
        if self.cpu_lane:
            out["cpu_lane"] = dict(self.cpu_lane)
        if self.triton is not None:
            out["triton"] = dict(self.triton)
        out["load_seconds"] = self.load_seconds
        return out


@dataclass
class LoadedModels:
    """The cross-encoder, the optional prefilter, and where they run."""

    reranker: ModelStage
    prefilter: ModelStage | None
    device: DeviceReport = field(default_factory=DeviceReport)

    @property
    def device_report(self) -> dict[str, Any]:
        return self.device.as_dict()

    def stages(self) -> list[ModelStage]:
        return [self.reranker] + ([self.prefilter] if self.prefilter else [])


class ModelSlot:
    """The models of one served model, loaded once: concurrent callers share one load (in a worker thread),
    a failed load is retried by the next caller."""

    def __init__(self, loader: Callable[[], LoadedModels]) -> None:
        self._loader = loader
        self.models: LoadedModels | None = None
        self._task: asyncio.Task[LoadedModels] | None = None
        self.error: str | None = None  # why the last load failed (until one succeeds)

    @property
    def state(self) -> str:
        """ "loaded", "loading", "failed" (the last load raised; the next caller retries) or "not_loaded"."""
        if self.models is not None:
            return "loaded"
        if self._task is not None and not self._task.done():
            return "loading"
        return "failed" if self.error is not None else "not_loaded"

    async def load(self) -> LoadedModels:
        if self.models is not None:
            return self.models
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(asyncio.to_thread(self._loader))
        task = self._task
        try:
            self.models = await asyncio.shield(task)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._task is task:
                self._task = None
            self.error = str(exc) or type(exc).__name__
            raise
        self.error = None
        return self.models

    def require(self) -> LoadedModels:
        if self.models is None:
            raise RuntimeError("the models are not loaded yet (await load() first)")
        return self.models

    async def ready(self) -> bool:
        if self.models is None:
            return False
        for stage in self.models.stages():
            if not await stage.scorer.ready():
                return False
        return True

    async def close(self) -> None:
        if self.models is not None:
            for stage in self.models.stages():
                await stage.scorer.close()
