"""Model loading, next to the composition root: reads the manifests, picks variant and device, builds the
scorers, and hands the pipeline typed stages (`LoadedModels`).

Decision for the cross-encoder (the prefilter always runs on the CPU, int8 when exported):
- device "cpu", or no usable GPU, or NVML's free memory below the model's need + margin: CPU provider,
  variant per `cpu_precision` (int8 by default; fp32 reproduces the reference scores); an int8 file that
  needs CPU flags this CPU lacks (full-range int8 needs VNNI, manifest `requires_cpu_flags`) is passed
  over for the 7-bit file beside it, else fp32, and the report (`/info` "device") says why;
- otherwise the CUDA provider (fp16 variant when exported, else fp32), checked with
  `session.get_providers()[0]` because onnxruntime-gpu silently falls back to the CPU, composed with a
  CPU scorer that takes the batches a CUDA OOM/CUDA error breaks;
- Triton configured: a TritonPool (one TritonScorer per endpoint, balanced) as the primary with that local
  scorer as the fallback.

The loader takes `LoadOptions`, the slice of the settings it uses (`LoadOptions.for_model`: the flat settings
merged with the model's table in the models file, and the manifest the composition root read once), so the
same loader is built once per served model. Every CPU session of the process runs on one `FairLane`; each
model takes its place on it with its weight.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

from gateway import metrics
from gateway.backends.base import Scorer
from gateway.backends.fallback import MarkDownFallback, SplittingFallback
from gateway.backends.gpu_probe import GpuProbe, GpuStatus, NvmlProbe
from gateway.backends.onnx_local import FairLane, OnnxScorer, SessionLike, make_session
from gateway.backends.prefix_reuse import PrefixReuseScorer
from gateway.backends.triton_pool import TritonPool
from gateway.config import Settings
from gateway.cpu_features import cpu_flags, cpu_variant, is_dynamic_int8
from gateway.errors import ModelRepositoryError
from gateway.models import DeviceReport, LoadedModels, ModelStage
from gateway.repository import ModelSpec, read_model_spec
from gateway.tokenization import PairTokenizer, check_inputs

log = logging.getLogger(__name__)

SessionFactory = Callable[..., SessionLike]  # (path, *, device, threads) -> session
# GPU memory a model needs beyond its weights file: CUDA context, cuBLAS workspace, activations.
GPU_WORKSPACE_MB = 512


@dataclass(frozen=True)
class TritonOptions:
    endpoints: tuple[str, ...]
    url: str
    protocol: Literal["grpc", "http"]
    balance: Literal["least_outstanding", "round_robin"]
    model_name: str
    timeout_s: float
    resolve_s: float


# A cross-encoder this wide (config.json `hidden_size`) or wider holds the CPU lane alone, on every core, when
# the gateway serves several: its batches are long (a 20-layer x 1024 decoder's 512-token pair: 0.7 s on 2
# cores, 1.2 s on one), and beside another model's batch, on one core, it made a small model's requests wait
# for one of them each (`make bench-mixed`: the small model's p99 went from 0.7 to 1.5 s). Alone in a gateway
# it runs like any model: two batches at once, one core each, which is faster.
WIDE_HIDDEN_SIZE = 1024


def hidden_size(spec: ModelSpec) -> int | None:
    """The model's hidden size from the config.json beside its tokenizer (None when it says none)."""
    try:
        config = json.loads((spec.tokenizer_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for key in ("hidden_size", "d_model", "n_embd"):
        if isinstance(config.get(key), int):
            return int(config[key])
    return None


@dataclass(frozen=True)
class LoadOptions:
    """What loading one served model depends on (a slice of `Settings`)."""

    repository: Path
    model_name: str
    prefilter_name: str = ""
    device: str = "auto"
    cpu_precision: str = "int8"
    gpu_memory_margin_mb: int = 1024
    threads: int = 1
    cpu_concurrency: int = 1  # batches the CPU lane runs at once (the lane is the loader's, made once)
    served_models: int = 1  # cross-encoders the gateway serves on that lane
    flush_denormals: bool = True  # the CPU lane's threads flush denormals to zero (gateway/denormals.py)
    max_length: int | None = None
    prefilter_max_length: int | None = 128
    token_budget: int = 512
    gpu_token_budget: int = 16384
    int8_row_batches: bool = True
    reprobe_s: float = 5.0
    triton: TritonOptions | None = None
    weight: float = 1.0  # the model's share of the CPU lane while others have batches waiting
    default_instruction: str | None = None  # replaces the manifest's (a decoder's prompt), when set
    spec: ModelSpec | None = None  # the manifest, read once by the composition root (None: read at load)
    prefilter_spec: ModelSpec | None = None

    @classmethod
    def for_model(
        cls,
        settings: Settings,
        name: str,
        *,
        spec: ModelSpec | None = None,
        prefilter_spec: ModelSpec | None = None,
    ) -> LoadOptions:
        """The options of served model `name`: the flat settings with its table in the models file applied."""
        table = settings.model_table(name)
        return replace(
            cls.from_settings(settings.for_model(name), name),
            weight=table.weight,
            default_instruction=table.default_instruction,
            spec=spec,
            prefilter_spec=prefilter_spec,
        )

    @classmethod
    def from_settings(cls, s: Settings, model_name: str | None = None) -> LoadOptions:
        name = model_name or s.model_name
        triton = None
        if s.triton_url:
            triton = TritonOptions(
                endpoints=tuple(s.triton_endpoints),
                url=s.triton_url,
                protocol=s.triton_protocol,
                balance=s.triton_balance,
                model_name=s.triton_model_name if name == s.model_name and s.triton_model_name else name,
                timeout_s=s.triton_timeout_s,
                resolve_s=s.triton_resolve_s,
            )
        return cls(
            repository=s.model_repository,
            model_name=name,
            prefilter_name=s.prefilter_name,
            device=s.device,
            cpu_precision=s.cpu_precision,
            gpu_memory_margin_mb=s.gpu_memory_margin_mb,
            threads=s.intra_op_threads,
            cpu_concurrency=s.cpu_concurrency,
            flush_denormals=s.flush_denormals,
            max_length=s.max_length,
            prefilter_max_length=s.prefilter_max_length,
            token_budget=s.token_budget,
            gpu_token_budget=s.gpu_token_budget,
            int8_row_batches=s.int8_row_batches,
            reprobe_s=s.fallback_reprobe_s,
            triton=triton,
        )


def gpu_need_mb(spec: ModelSpec, variant: str) -> int:
    return 2 * (spec.variant_bytes(variant) >> 20) + GPU_WORKSPACE_MB


class ModelLoader:
    """Callable the pipeline runs (in a worker thread) to load every stage of one served model."""

    def __init__(
        self,
        options: LoadOptions,
        *,
        gpu_probe: GpuProbe | None = None,
        session_factory: SessionFactory | None = None,
        cpu_session_factory: SessionFactory | None = None,
        cpu_flags_probe: Callable[[], frozenset[str]] = cpu_flags,
        cpu_lane: FairLane | None = None,
        shared_prefilter: _SharedStage | None = None,
    ) -> None:
        self.options = options
        self.gpu_probe = gpu_probe or NvmlProbe()
        sessions = partial(make_session, flush_denormals=options.flush_denormals)
        self.session_factory = session_factory or sessions
        self.cpu_session_factory = cpu_session_factory or sessions
        self.cpu_flags_probe = cpu_flags_probe
        # One CPU lane for every CPU session of the process: two models never fight over the cores.
        self._cpu_lane = cpu_lane or FairLane(
            "ort-cpu",
            trim_when_idle=True,
            workers=options.cpu_concurrency,
            flush_denormals=options.flush_denormals,
        )
        # The prefilter is loaded once and shared by every served model's pipeline.
        self._prefilter_stage = shared_prefilter or _SharedStage()

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> ModelLoader:
        return cls(LoadOptions.from_settings(settings), **kwargs)

    def probe(self) -> GpuStatus:
        if self.options.device == "cpu":
            return GpuStatus(False, reason="RERANKER_DEVICE=cpu")
        return self.gpu_probe.probe()

    def __call__(self) -> LoadedModels:
        started = time.perf_counter()
        o = self.options
        spec = with_instruction(o.spec or read_model_spec(o.repository, o.model_name), o.default_instruction)
        check_inputs(spec.input_names)
        gpu = self.probe()
        report = DeviceReport(gpu=gpu.as_dict())
        local, variant = self._local_reranker(spec, gpu, report)
        scorer: Scorer = local
        if o.triton is not None:
            triton = triton_pool(o.triton, spec.input_names, reprobe_s=o.reprobe_s)
            scorer = MarkDownFallback(triton, local, reprobe_s=o.reprobe_s, model=o.model_name)
            report.triton = {
                "url": o.triton.url,
                "endpoints": list(o.triton.endpoints),
                "protocol": o.triton.protocol,
                "balance": o.triton.balance,
            }
        max_length = min(o.max_length or spec.max_length, spec.max_length)
        on_gpu = report.cuda_used or o.triton is not None
        reranker = ModelStage(
            spec=spec,
            tokenizer=PairTokenizer.from_spec(spec, max_length=max_length),
            scorer=scorer,
            max_length=max_length,
            variant=variant,
            token_budget=o.gpu_token_budget if on_gpu else o.token_budget,
            one_row_batches=o.int8_row_batches and is_dynamic_int8(variant) and o.triton is None,
            # Triton's default config runs model.onnx (fp32; TensorRT fp16 on the GPU): the fp32 logits.
            primary_variant="fp32" if o.triton is not None else None,
            per_query_batches=isinstance(scorer, PrefixReuseScorer),
        )
        prefilter = self._prefilter_stage.get(lambda: self._prefilter(report)) if o.prefilter_name else None
        elapsed = time.perf_counter() - started
        metrics.MODEL_LOAD_SECONDS.labels(o.model_name).set(elapsed)
        report.load_seconds = round(elapsed, 3)
        log.info(
            "loaded %s (%s, %s)%s in %.2fs",
            spec.name,
            variant,
            scorer.name,
            f" and {prefilter.spec.name} ({prefilter.variant})" if prefilter else "",
            elapsed,
        )
        return LoadedModels(reranker=reranker, prefilter=prefilter, device=report)

    def _cpu_width(self, spec: ModelSpec) -> int:
        """The CPU lane's workers one batch of this cross-encoder takes: all of them for a wide model
        (`WIDE_HIDDEN_SIZE`) when the gateway serves several, else one."""
        workers = self._cpu_lane.workers
        if workers > 1 and self.options.served_models > 1 and (hidden_size(spec) or 0) >= WIDE_HIDDEN_SIZE:
            return workers
        return 1

    def _cpu_scorer(
        self,
        spec: ModelSpec,
        variant: str,
        *,
        weight: float = 1.0,
        width: int = 1,
        report: DeviceReport | None = None,
    ) -> OnnxScorer | PrefixReuseScorer:
        path = spec.variant_path(variant)
        assert path is not None
        threads = self.options.threads * width
        session = self.cpu_session_factory(path, device="cpu", threads=threads)
        model = spec.folder.name
        lane = self._cpu_lane.share(model, weight, width)
        if report is not None:
            report.cpu_lane = {
                "threads": threads,
                "width": width,
                "lane_workers": self._cpu_lane.workers,
                "flush_denormals": self._cpu_lane.flush_denormals,
            }
        if spec.variants[variant].get("kv_cache"):  # a decoder graph with a key/value cache: the head once
            return PrefixReuseScorer(session, name="onnx-cpu", lane=lane, model=model)
        return OnnxScorer(session, name="onnx-cpu", lane=lane, model=model)

    def _local_reranker(self, spec: ModelSpec, gpu: GpuStatus, report: DeviceReport) -> tuple[Scorer, str]:
        o = self.options
        cpu_var = self._cpu_variant(spec, o.cpu_precision, report)
        if o.device != "cpu":
            gpu_var = "fp16" if spec.variant_path("fp16") else "fp32"
            need = gpu_need_mb(spec, gpu_var) + o.gpu_memory_margin_mb
            if not gpu.available:
                report.cuda = f"not used: {gpu.reason}"
            elif gpu.free_mb is not None and gpu.free_mb < need and o.device == "auto":
                report.cuda = f"not used: {gpu.free_mb} MiB free < {need} MiB needed (model + margin)"
            else:
                cuda = self._cuda_scorer(spec, gpu_var, report)
                if cuda is not None:
                    fallback = self._cpu_scorer(
                        spec, cpu_var, weight=o.weight, width=self._cpu_width(spec), report=report
                    )
                    composed = SplittingFallback(cuda, fallback, model=o.model_name)
                    report.cuda, report.cuda_used = "used", True
                    return composed, gpu_var
            if o.device == "cuda":
                log.warning("RERANKER_DEVICE=cuda but %s; serving on the CPU", report.cuda)
            else:
                log.info("cross-encoder on the CPU: %s", report.cuda)
        width = self._cpu_width(spec)
        return self._cpu_scorer(spec, cpu_var, weight=o.weight, width=width, report=report), cpu_var

    def _cuda_scorer(self, spec: ModelSpec, variant: str, report: DeviceReport) -> OnnxScorer | None:
        path = spec.variant_path(variant)
        assert path is not None
        try:
            session = self.session_factory(path, device="cuda", threads=self.options.threads)
        except Exception as exc:
            report.cuda = f"not used: session creation failed: {exc}"
            return None
        provider = session.get_providers()[0]
        if provider != "CUDAExecutionProvider":  # onnxruntime-gpu falls back silently without CUDA libs
            report.cuda = f"not used: the session runs on {provider} (CUDA libraries missing?)"
            return None
        return OnnxScorer(
            session, name="onnx-cuda", model=spec.folder.name, flush_denormals=self.options.flush_denormals
        )

    def _cpu_variant(self, spec: ModelSpec, precision: str, report: DeviceReport) -> str:
        variant, passed_over = cpu_variant(spec, precision, self.cpu_flags_probe())
        if passed_over:
            log.warning("%s: %s", spec.name, passed_over)
            report.cpu_variant[spec.name] = passed_over
        return variant

    def _prefilter(self, report: DeviceReport) -> ModelStage:
        o = self.options
        spec = o.prefilter_spec or read_model_spec(o.repository, o.prefilter_name)
        check_inputs(spec.input_names)
        variant = self._cpu_variant(spec, "int8", report)
        max_length = min(o.prefilter_max_length or spec.max_length, spec.max_length)
        scorer = self._cpu_scorer(spec, variant)
        return ModelStage(
            spec=spec,
            tokenizer=PairTokenizer.from_spec(spec, max_length=max_length),
            scorer=scorer,
            max_length=max_length,
            variant=variant,
            token_budget=o.token_budget,
            one_row_batches=o.int8_row_batches and is_dynamic_int8(variant),
            per_query_batches=isinstance(scorer, PrefixReuseScorer),
        )

    def for_model(self, options: LoadOptions) -> ModelLoader:
        """A loader of another served model (`options`) over the same runtimes: probe, session factories,
        CPU lane and prefilter stage."""
        return ModelLoader(
            options,
            gpu_probe=self.gpu_probe,
            session_factory=self.session_factory,
            cpu_session_factory=self.cpu_session_factory,
            cpu_flags_probe=self.cpu_flags_probe,
            cpu_lane=self._cpu_lane,
            shared_prefilter=self._prefilter_stage,
        )


class _SharedStage:
    """One stage built once (under a lock: served models load in parallel threads) and then shared."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stage: ModelStage | None = None

    def get(self, build: Callable[[], ModelStage]) -> ModelStage:
        with self._lock:
            if self._stage is None:
                self._stage = build()
            return self._stage


Manifests = Mapping[str, ModelSpec | ModelRepositoryError]


def read_manifests(
    repository: Path, configured: list[str], default: str, prefilter_name: str
) -> dict[str, ModelSpec | ModelRepositoryError]:
    """Each served model's manifest, read once (the composition root hands them down), the default first:
    the configured folders, or with `all` every cross-encoder of the repository (folders with a manifest, the
    prefilter's and prefilter-role ones left out, `default` first). A folder whose manifest is missing or
    broken maps to its error, which its load reports (with `all`, a broken manifest counts as a reranker)."""
    names = configured
    if configured == ["all"]:
        names = sorted(
            (m.parent.name for m in repository.glob("*/manifest.json") if m.parent.name != prefilter_name),
            key=lambda name: (name != default, name),
        )
    specs: dict[str, ModelSpec | ModelRepositoryError] = {}
    for name in names:
        try:
            specs[name] = read_model_spec(repository, name)
        except ModelRepositoryError as exc:
            specs[name] = exc
    if configured == ["all"]:
        specs = {n: s for n, s in specs.items() if not (isinstance(s, ModelSpec) and s.role == "prefilter")}
        if not specs:
            raise ModelRepositoryError(
                f"RERANKER_MODELS=all: no cross-encoder in {repository} (run `make export`)"
            )
    return specs


def with_instruction(spec: ModelSpec, instruction: str | None) -> ModelSpec:
    """`spec` with its prompt's default instruction replaced (a model's table in the models file)."""
    if instruction is None or spec.template is None:
        return spec
    return replace(spec, template=replace(spec.template, default_instruction=instruction))


def triton_pool(options: TritonOptions, input_names: tuple[str, ...], *, reprobe_s: float) -> TritonPool:
    """One TritonScorer per Triton endpoint (a DNS name stands for all its addresses), balanced by a pool."""
    from gateway.backends.triton import TritonScorer  # only module importing tritonclient

    def connect(address: str) -> Scorer:
        return TritonScorer(
            url=address,
            protocol=options.protocol,
            model_name=options.model_name,
            input_names=input_names,
            timeout_s=options.timeout_s,
        )

    return TritonPool(
        list(options.endpoints),
        connect,
        name=f"triton-{options.protocol}",
        input_names=input_names,
        balance=options.balance,
        reprobe_s=reprobe_s,
        resolve_s=options.resolve_s,
    )


def describe_repository(manifests: Manifests) -> dict[str, Any]:
    """Manifest facts for /info before anything is loaded (from the manifests read at start-up)."""
    out: dict[str, Any] = {}
    for name, spec in manifests.items():
        if isinstance(spec, ModelRepositoryError):
            out[name] = {"error": spec.message}
        else:
            out[name] = {
                "model_id": spec.model_id,
                "max_length": spec.max_length,
                "variants": sorted(spec.variants),
            }
    return out


def missing_models(settings: Settings) -> dict[str, str]:
    """The folders the settings would serve (the cross-encoders and the prefilter) that the repository lacks,
    each with why (`python -m gateway check`, which `make serve` runs first)."""
    repository = settings.model_repository
    try:
        manifests = dict(
            read_manifests(
                repository, settings.configured_models, settings.model_name, settings.prefilter_name
            )
        )
    except ModelRepositoryError as exc:  # RERANKER_MODELS=all over an empty repository
        manifests = {settings.model_name: exc}
    if settings.prefilter_name:
        try:
            manifests[settings.prefilter_name] = read_model_spec(repository, settings.prefilter_name)
        except ModelRepositoryError as exc:
            manifests[settings.prefilter_name] = exc
    return {name: spec.message for name, spec in manifests.items() if isinstance(spec, ModelRepositoryError)}
