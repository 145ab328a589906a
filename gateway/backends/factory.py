"""Builds the loaded stages from settings: which variant, which execution provider, which fallbacks.

Decision for the cross-encoder (the prefilter always runs on the CPU, int8 when exported):
- device "cpu", or no usable GPU, or NVML's free memory below the model's need + margin: CPU provider,
  variant per `cpu_precision` (int8 by default; fp32 reproduces the reference scores); an int8 file that
  needs CPU flags this CPU lacks (full-range int8 needs VNNI, manifest `requires_cpu_flags`) is passed
  over for the 7-bit file beside it, else fp32, and the report (`/info` "device") says why;
- otherwise the CUDA provider (fp16 variant when exported, else fp32), checked with
  `session.get_providers()[0]` because onnxruntime-gpu silently falls back to the CPU, composed with a
  CPU scorer that takes the batches a CUDA OOM/CUDA error breaks;
- `triton_url` set: a TritonPool (one TritonScorer per endpoint, balanced) as the primary with that local
  scorer as the fallback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from gateway import metrics
from gateway.backends.base import Scorer
from gateway.backends.fallback import MarkDownFallback, SplittingFallback
from gateway.backends.gpu_probe import GpuProbe, GpuStatus, NvmlProbe
from gateway.backends.onnx_local import Lane, OnnxScorer, SessionLike, make_session
from gateway.backends.triton_pool import TritonPool
from gateway.config import Settings
from gateway.cpu_features import cpu_flags, cpu_variant, is_dynamic_int8
from gateway.errors import ModelRepositoryError
from gateway.models import LoadedModels, ModelStage
from gateway.repository import ModelSpec, read_model_spec
from gateway.tokenization import PairTokenizer, check_inputs

log = logging.getLogger(__name__)

SessionFactory = Callable[..., SessionLike]  # (path, *, device, threads) -> session
# GPU memory a model needs beyond its weights file: CUDA context, cuBLAS workspace, activations.
GPU_WORKSPACE_MB = 512


def gpu_need_mb(spec: ModelSpec, variant: str) -> int:
    return 2 * (spec.variant_bytes(variant) >> 20) + GPU_WORKSPACE_MB


class ModelLoader:
    """Callable the pipeline runs (in a worker thread) to load every stage."""

    def __init__(
        self,
        settings: Settings,
        *,
        gpu_probe: GpuProbe | None = None,
        session_factory: SessionFactory | None = None,
        cpu_session_factory: SessionFactory | None = None,
        cpu_flags_probe: Callable[[], frozenset[str]] = cpu_flags,
    ) -> None:
        self.settings = settings
        self.gpu_probe = gpu_probe or NvmlProbe()
        self.session_factory = session_factory or make_session
        self.cpu_session_factory = cpu_session_factory or make_session
        self.cpu_flags_probe = cpu_flags_probe
        self._cpu_lane = Lane("ort-cpu", trim_when_idle=True)

    def probe(self) -> GpuStatus:
        if self.settings.device == "cpu":
            return GpuStatus(False, reason="RERANKER_DEVICE=cpu")
        return self.gpu_probe.probe()

    def __call__(self) -> LoadedModels:
        started = time.perf_counter()
        s = self.settings
        spec = read_model_spec(s.model_repository, s.model_name)
        check_inputs(spec.input_names)
        gpu = self.probe()
        report: dict[str, Any] = {"gpu": gpu.as_dict()}
        local, variant = self._local_reranker(spec, gpu, report)
        scorer: Scorer = local
        if s.triton_url:
            triton = triton_pool(s, spec.input_names)
            scorer = MarkDownFallback(triton, local, reprobe_s=s.fallback_reprobe_s)
            report["triton"] = {
                "url": s.triton_url,
                "endpoints": s.triton_endpoints,
                "protocol": s.triton_protocol,
                "balance": s.triton_balance,
            }
        max_length = min(s.max_length or spec.max_length, spec.max_length)
        reranker = ModelStage(
            spec=spec,
            tokenizer=PairTokenizer.from_dir(spec.tokenizer_dir, max_length=max_length),
            scorer=scorer,
            max_length=max_length,
            variant=variant,
            token_budget=s.gpu_token_budget
            if report.get("cuda") == "used" or s.triton_url
            else s.token_budget,
            one_row_batches=s.int8_row_batches and is_dynamic_int8(variant) and not s.triton_url,
        )
        prefilter = self._prefilter(report) if s.prefilter_name else None
        elapsed = time.perf_counter() - started
        metrics.MODEL_LOAD_SECONDS.set(elapsed)
        report["load_seconds"] = round(elapsed, 3)
        log.info(
            "loaded %s (%s, %s)%s in %.2fs",
            spec.name,
            variant,
            scorer.name,
            f" and {prefilter.spec.name} ({prefilter.variant})" if prefilter else "",
            elapsed,
        )
        return LoadedModels(reranker=reranker, prefilter=prefilter, device_report=report)

    def _cpu_scorer(self, spec: ModelSpec, variant: str) -> OnnxScorer:
        path = spec.variant_path(variant)
        assert path is not None
        session = self.cpu_session_factory(path, device="cpu", threads=self.settings.intra_op_threads)
        return OnnxScorer(session, name="onnx-cpu", lane=self._cpu_lane)

    def _local_reranker(self, spec: ModelSpec, gpu: GpuStatus, report: dict[str, Any]) -> tuple[Scorer, str]:
        s = self.settings
        cpu_var = self._cpu_variant(spec, s.cpu_precision, report)
        if s.device != "cpu":
            gpu_var = "fp16" if spec.variant_path("fp16") else "fp32"
            need = gpu_need_mb(spec, gpu_var) + s.gpu_memory_margin_mb
            if not gpu.available:
                report["cuda"] = f"not used: {gpu.reason}"
            elif gpu.free_mb is not None and gpu.free_mb < need and s.device == "auto":
                report["cuda"] = f"not used: {gpu.free_mb} MiB free < {need} MiB needed (model + margin)"
            else:
                cuda = self._cuda_scorer(spec, gpu_var, report)
                if cuda is not None:
                    fallback = self._cpu_scorer(spec, cpu_var)
                    composed = SplittingFallback(cuda, fallback)
                    report["cuda"] = "used"
                    return composed, gpu_var
            if s.device == "cuda":
                log.warning("RERANKER_DEVICE=cuda but %s; serving on the CPU", report["cuda"])
            else:
                log.info("cross-encoder on the CPU: %s", report["cuda"])
        return self._cpu_scorer(spec, cpu_var), cpu_var

    def _cuda_scorer(self, spec: ModelSpec, variant: str, report: dict[str, Any]) -> OnnxScorer | None:
        path = spec.variant_path(variant)
        assert path is not None
        try:
            session = self.session_factory(path, device="cuda", threads=self.settings.intra_op_threads)
        except Exception as exc:
            report["cuda"] = f"not used: session creation failed: {exc}"
            return None
        provider = session.get_providers()[0]
        if provider != "CUDAExecutionProvider":  # onnxruntime-gpu falls back silently without CUDA libs
            report["cuda"] = f"not used: the session runs on {provider} (CUDA libraries missing?)"
            return None
        return OnnxScorer(session, name="onnx-cuda")

    def _cpu_variant(self, spec: ModelSpec, precision: str, report: dict[str, Any]) -> str:
        variant, passed_over = cpu_variant(spec, precision, self.cpu_flags_probe())
        if passed_over:
            log.warning("%s: %s", spec.name, passed_over)
            report.setdefault("cpu_variant", {})[spec.name] = passed_over
        return variant

    def _prefilter(self, report: dict[str, Any]) -> ModelStage:
        s = self.settings
        spec = read_model_spec(s.model_repository, s.prefilter_name)
        check_inputs(spec.input_names)
        variant = self._cpu_variant(spec, "int8", report)
        max_length = min(s.prefilter_max_length or spec.max_length, spec.max_length)
        return ModelStage(
            spec=spec,
            tokenizer=PairTokenizer.from_dir(spec.tokenizer_dir, max_length=max_length),
            scorer=self._cpu_scorer(spec, variant),
            max_length=max_length,
            variant=variant,
            token_budget=s.token_budget,
            one_row_batches=s.int8_row_batches and is_dynamic_int8(variant),
        )


def triton_pool(settings: Settings, input_names: tuple[str, ...]) -> TritonPool:
    """One TritonScorer per Triton endpoint (a DNS name stands for all its addresses), balanced by a pool."""
    from gateway.backends.triton import TritonScorer  # only module importing tritonclient

    s = settings

    def connect(address: str) -> Scorer:
        return TritonScorer(
            url=address,
            protocol=s.triton_protocol,
            model_name=s.effective_triton_model_name,
            input_names=input_names,
            timeout_s=s.triton_timeout_s,
        )

    return TritonPool(
        s.triton_endpoints,
        connect,
        name=f"triton-{s.triton_protocol}",
        input_names=input_names,
        balance=s.triton_balance,
        reprobe_s=s.fallback_reprobe_s,
        resolve_s=s.triton_resolve_s,
    )


def describe_repository(settings: Settings) -> dict[str, Any]:
    """Manifest facts for /info before anything is loaded (reads JSON only)."""
    out: dict[str, Any] = {}
    for name in filter(None, [settings.model_name, settings.prefilter_name]):
        try:
            spec = read_model_spec(settings.model_repository, name)
            out[name] = {
                "model_id": spec.model_id,
                "max_length": spec.max_length,
                "variants": sorted(spec.variants),
            }
        except ModelRepositoryError as exc:
            out[name] = {"error": exc.message}
    return out
