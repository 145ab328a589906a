"""The measuring half of `make gpu-check`: run by `bench.gpu_check run` in a fresh process after the install.

Drives the gateway through its public pieces only: `gateway.loading.ModelLoader` (with a session
factory where a section needs other CUDA provider options), `gateway.pipeline.Reranker`,
`gateway.app.create_app`, `gateway.tokenization`, `gateway.backends.onnx_local.make_session`. Every section
records its own failure in `errors` and the next one runs; the JSON (and gpu.md) is rewritten after every
section, so a run cut short by its time limit still reports what it measured (`complete` says whether it ended).

What keeps the figures from misleading:
- a speed row counts only requests the named backend served alone (`onnx-cuda`, not `onnx-cuda+onnx-cpu`), and
  the fp16 and fp32 contenders refuse to run when their own file is missing (never one file under both names);
- GPU memory is measured per contender in a fresh process (`--memory-child`): one long-lived process would
  charge each contender with what the ones before it left in their arenas;
- node placement: a profiled run of each file with the gateway session's providers and provider options counts
  the nodes each provider ran, and the compute nodes (float outputs) left on the CPU provider;
- fp16 parity on the GPU passes or fails with the export's own bounds (the manifest's thresholds, export.validate);
- the sentence-transformers baseline is checked against the fp32 ONNX on the same pairs with the installed
  sentence-transformers (the GPU image's own version), and the versions of every library are recorded.
See bench/gpu_check.py for what each section shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.data import load_set
from bench.gpu_check import REPO_ROOT, log, write_markdown
from bench.padding import padded_tokens, padding_plans

MiB = 1 << 20
GPU_BUDGETS = (4096, 16384)  # the gateway's gpu_token_budget default is the second
BARE_BATCHES = (32, 64, 128)
BARE_TOKENS = (128, 512)
BARE_SECONDS = 2.0  # timed per batch size and contender
BASELINE_QUERIES = 5
MEMORY_WARMUP = 3  # requests each memory child serves before it reads the memory
TORCH_FP16 = "torch fp16 CrossEncoder"
FP16_PIPELINE = "onnx-cuda fp16 (gateway pipeline)"
FP32_PIPELINE = "onnx-cuda fp32 (gateway pipeline)"
FLOAT_TYPES = {"float", "float16", "bfloat16", "double"}
# Every session and pipeline a section times must really run on CUDA (onnxruntime-gpu falls back to the CPU
# silently): a CPU figure under a GPU heading is worse than none. Only a CPU smoke run of this module sets it off.
REQUIRE_CUDA = True
Requests = Sequence[tuple[str, list[str]]]


def check_on_cuda(what: str, provider: str) -> None:
    if REQUIRE_CUDA and provider != "CUDAExecutionProvider":
        raise RuntimeError(f"{what} runs on {provider}, not on CUDA: not measured")


def nothing_measured(rows: dict[str, dict[str, Any]]) -> None:
    """A section whose every contender was refused failed as a whole (its rows still say why each)."""
    if rows and all("error" in row for row in rows.values()):
        raise RuntimeError(
            "no contender measured: " + "; ".join(f"{n}: {r['error']}" for n, r in rows.items())
        )


def served_only_by(backend: str, expected: str) -> bool:
    """Whether every part of a response's `backend` ("onnx-cuda+onnx-cpu" when a fallback split a batch) is
    `expected` or one of its kinds ("triton" takes "triton-grpc")."""
    return all(part == expected or part.startswith(expected + "-") for part in backend.split("+"))


# --- helpers ---------------------------------------------------------------------------------------


def nvml_info() -> dict[str, Any]:
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        name = pynvml.nvmlDeviceGetName(handle)
        driver = pynvml.nvmlSystemGetDriverVersion()
        mine = None
        try:  # this process's own use, where the driver reports it (not inside every VM)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                    mine = int(proc.usedGpuMemory) // MiB
        except pynvml.NVMLError:
            pass
        return {
            "gpu": name.decode() if isinstance(name, bytes) else str(name),
            "driver": driver.decode() if isinstance(driver, bytes) else str(driver),
            "used_mb": int(mem.used) // MiB,
            "total_mb": int(mem.total) // MiB,
            "this_process_mb": mine,
        }
    finally:
        pynvml.nvmlShutdown()


def used_mb() -> int | None:
    """The device's used memory; None where there is no NVML (only a CPU smoke run gets that far)."""
    try:
        return int(nvml_info()["used_mb"])
    except Exception:
        if REQUIRE_CUDA:
            raise
        return None


def library_versions() -> dict[str, Any]:
    """Every library a figure depends on, as this process imports it (the GPU image's own where not carried)."""
    import importlib.metadata as md
    import platform

    versions: dict[str, Any] = {"python": platform.python_version()}
    for dist in (
        "onnxruntime-gpu", "onnxruntime", "onnx", "numpy", "torch", "transformers", "sentence-transformers",
        "tokenizers", "safetensors", "fastapi", "pydantic", "protobuf", "nvidia-cudnn-cu13", "nvidia-cuda-runtime",
    ):  # fmt: skip
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    import onnxruntime as ort

    versions["onnxruntime imported from"] = str(Path(ort.__file__).parent)
    try:
        from onnxruntime.capi import build_and_package_info as info

        versions["onnxruntime built for CUDA"] = getattr(info, "cuda_version", None)
    except ImportError:
        pass
    try:
        import torch

        versions["torch CUDA"] = torch.version.cuda
        versions["torch cuDNN"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    except ImportError:
        pass
    return versions


class RecordingSession:
    """A real onnxruntime session that records each run's shape and outcome (the OOM section's evidence)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.calls: list[dict[str, Any]] = []

    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, Any]) -> list[Any]:
        rows, width = input_feed["input_ids"].shape
        try:
            out = self.session.run(output_names, input_feed)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            self.calls.append({"rows": int(rows), "width": int(width), "outcome": "failed", "error": first})
            raise
        self.calls.append({"rows": int(rows), "width": int(width), "outcome": "ok"})
        return list(out)

    def get_inputs(self) -> list[Any]:
        return list(self.session.get_inputs())

    def get_outputs(self) -> list[Any]:
        return list(self.session.get_outputs())

    def get_providers(self) -> list[str]:
        return list(self.session.get_providers())


def cuda_session(path: Path, *, threads: int, mem_limit_bytes: int | None = None) -> Any:
    """The gateway's CUDA session (`make_session`), optionally with a `gpu_mem_limit` on the provider."""
    from gateway.backends.onnx_local import make_session

    session = make_session(path, device="cuda", threads=threads, gpu_mem_limit_bytes=mem_limit_bytes)
    what = "the session" if mem_limit_bytes is None else "the memory-limited session"
    check_on_cuda(f"{what} of {path.name}", session.get_providers()[0])
    return session


def variant_file(spec: Any, variant: str) -> Path:
    """The file of `variant`, or an error naming it: a contender never runs another variant's file."""
    path = spec.variant_path(variant)
    if path is None:
        raise RuntimeError(f"the repository has no {variant} file: the {variant} contender is not measured")
    return Path(path)


def settings_for(repository: Path, **overrides: Any) -> Any:
    from gateway.config import Settings

    base: dict[str, Any] = {
        "model_repository": repository,
        "prefilter_name": "",
        "keep": 0,
        "cache_size": 0,
        "device": "cuda",
        "max_documents": 1000,
        "request_timeout_s": 600,
    }
    base.update(overrides)
    return Settings.model_validate(base)


def reranker_for(settings: Any, **loader_args: Any) -> Any:
    """The gateway's pipeline with the pair cache the settings ask for (settings_for: none). A Reranker built
    without one gets the default 50,000-entry cache, which would serve a repeated request without scoring it."""
    from gateway.cache import PairScoreCache
    from gateway.loading import ModelLoader
    from gateway.pipeline import PipelineConfig, Reranker

    cache = PairScoreCache(settings.cache_size, settings.cache_ttl_s)
    return Reranker(
        PipelineConfig.from_settings(settings),
        ModelLoader.from_settings(settings, **loader_args),
        cache=cache,
    )


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def ties(scores: np.ndarray) -> int:
    return int(scores.size - np.unique(scores).size)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Bare:
    """The gateway's tokenizer and batch builder over one model, for bare-session sections."""

    def __init__(self, repository: Path) -> None:
        from gateway.repository import read_model_spec
        from gateway.tokenization import PairTokenizer

        self.spec = read_model_spec(repository, "reranker")
        self.tok = PairTokenizer.from_spec(self.spec)
        self.names = tuple(self.spec.input_names)

    def encode(self, query: str, docs: Sequence[str], max_length: int | None = None) -> Any:
        return self.tok.encode_pairs(query, list(docs), max_length=max_length)

    def windows(self, query: str, docs: Sequence[str], max_length: int | None = None) -> list[Any]:
        return list(self.encode(query, docs, max_length).windows)

    def batches(self, windows: Sequence[Any], plan: Sequence[Sequence[int]]) -> list[tuple[list[int], Any]]:
        from gateway.tokenization import build_batch

        return [
            (list(rows), build_batch([windows[i] for i in rows], self.names, self.tok.pad_id))
            for rows in plan
        ]

    def score(self, session: Any, windows: Sequence[Any], budget: int = 16384) -> np.ndarray:
        from gateway.tokenization import plan_batches

        plan = plan_batches([len(w.ids) for w in windows], token_budget=budget, max_rows=64)
        logits = np.empty(len(windows), dtype=np.float32)
        for rows, batch in self.batches(windows, plan):
            out = np.asarray(session.run(["logits"], batch.inputs)[0])
            logits[rows] = out.reshape(out.shape[0], -1)[:, 0]
        return logits

    def thresholds(self) -> Any:
        """The export's parity bounds, as the manifest recorded them (export.validate.Thresholds)."""
        from export.validate import Thresholds

        manifest = json.loads((self.spec.folder / "manifest.json").read_text())
        recorded = manifest.get("parity", {}).get("thresholds") or {}
        return Thresholds(**{k: v for k, v in recorded.items() if k in Thresholds.__dataclass_fields__})


# --- sections ---------------------------------------------------------------------------------------


async def section_provider(repository: Path, results: dict[str, Any]) -> Any:
    settings = settings_for(repository)
    reranker = reranker_for(settings)
    models = await reranker.load()
    scorer = models.reranker.scorer
    primary = getattr(scorer, "primary", scorer)
    session = getattr(primary, "session", None)
    results["provider"] = {
        "device_report": models.device_report,
        "scorer": scorer.name,
        "variant": models.reranker.variant,
        "session_providers": session.get_providers() if session is not None else None,
        "provider_options": session.get_provider_options() if session is not None else None,
        "onnxruntime": results.get("versions", {}).get("onnxruntime-gpu"),
        "torch": results.get("versions", {}).get("torch"),
    }
    if REQUIRE_CUDA and models.device_report.get("cuda") != "used":
        await reranker.close()
        raise RuntimeError(f"the gateway's loader did not take the GPU: {models.device_report.get('cuda')}")
    return reranker


def count_placement(events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Nodes per provider in an onnxruntime profile, and the compute nodes (a float output) on the CPU one."""
    providers: dict[str, str] = {}
    ops: dict[str, str] = {}
    compute: dict[str, bool] = {}
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        args = event.get("args", {})
        node = name[: -len("_kernel_time")]
        providers[node] = str(args.get("provider", "?"))
        ops[node] = str(args.get("op_name", "?"))
        outputs = {dtype for item in args.get("output_type_shape", []) for dtype in item}
        compute[node] = bool(outputs & FLOAT_TYPES)
    on_cpu = [n for n, p in providers.items() if p == "CPUExecutionProvider"]
    return {
        "nodes": len(providers),
        "by_provider": dict(Counter(providers.values())),
        "cpu_compute_nodes": sum(1 for n in on_cpu if compute[n]),
        "cpu_compute_ops": dict(Counter(ops[n] for n in on_cpu if compute[n])),
        "cpu_other_ops": dict(Counter(ops[n] for n in on_cpu if not compute[n])),
    }


def placement(path: Path, batch: dict[str, np.ndarray], device: str) -> dict[str, Any]:
    """Where onnxruntime ran each node of `path`: one profiled run with the providers and provider options of
    the gateway's own session (make_session) and its optimization level."""
    import onnxruntime as ort

    from gateway.backends.onnx_local import make_session

    gateway_session: Any = make_session(path, device=device, threads=1)  # a real InferenceSession
    if device == "cuda":
        check_on_cuda(f"the session of {path.name}", gateway_session.get_providers()[0])
    options = gateway_session.get_provider_options()
    providers = [(p, options.get(p, {})) for p in gateway_session.get_providers()]
    del gateway_session
    with tempfile.TemporaryDirectory() as folder:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(folder) / "placement")
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        session.run(None, batch)
        events = json.loads(Path(session.end_profiling()).read_text())
    return {"providers": [p for p, _ in providers], **count_placement(events)}


def section_placement(bare: Bare, requests: Requests, results: dict[str, Any]) -> None:
    query, docs = requests[0]
    windows = bare.windows(query, docs[:16])
    batch = bare.batches(windows, [list(range(len(windows)))])[0][1].inputs
    device = "cuda" if REQUIRE_CUDA else "cpu"
    found = {
        variant: placement(variant_file(bare.spec, variant), batch, device) for variant in ("fp16", "fp32")
    }
    results["placement"] = {
        "how": "onnxruntime profiling of one 16-pair batch, the gateway session's providers and options",
        **found,
    }


def section_parity(bare: Bare, requests: Requests, results: dict[str, Any]) -> None:
    """fp16 against fp32 on the CUDA provider, per window, gated with the export's fp16 bounds."""
    from export.validate import compare, variant_problems
    from gateway.assembly import sigmoid

    threads = os.cpu_count() or 1
    s16 = cuda_session(variant_file(bare.spec, "fp16"), threads=threads)
    s32 = cuda_session(variant_file(bare.spec, "fp32"), threads=threads)
    per16: list[np.ndarray] = []
    per32: list[np.ndarray] = []
    top10: list[float] = []
    top1: list[float] = []
    ties32 = ties16 = 0
    dtype = str(s16.get_outputs()[0].type)
    for query, docs in requests:
        windows = bare.windows(query, docs)
        a, b = bare.score(s16, windows), bare.score(s32, windows)
        per16.append(a)
        per32.append(b)
        k = min(10, a.size)
        top10.append(len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k)
        top1.append(float(np.argmax(a) == np.argmax(b)))
        ties32 += ties(sigmoid(a))
        half = a.astype(np.float16)
        ties16 += ties((np.float16(1) / (np.float16(1) + np.exp(-half))).astype(np.float16))
    groups = [q for q, a in enumerate(per16) for _ in range(a.size)]
    figures = compare(np.concatenate(per32), np.concatenate(per16), groups)
    thresholds = bare.thresholds()
    problems = variant_problems("fp16", figures, thresholds)
    every = np.abs(np.concatenate(per16) - np.concatenate(per32))
    results["parity"] = {
        "queries": len(requests),
        "docs_per_query": len(requests[0][1]),
        "max_abs_diff": float(every.max()),
        "mean_abs_diff": float(every.mean()),
        "spearman": figures["spearman"],
        "top10_agreement": float(np.mean(top10)),
        "top1_agreement": float(np.mean(top1)),
        "logits_dtype": dtype,
        "ties_fp32_sigmoid": ties32,
        "ties_fp16_sigmoid": ties16,
        "providers": {"fp16": s16.get_providers()[0], "fp32": s32.get_providers()[0]},
        "gate": {
            "passed": not problems,
            "problems": problems,
            "bounds": {
                "fp16_max_abs_diff": thresholds.fp16_max_abs_diff,
                "fp16_min_spearman": thresholds.fp16_min_spearman,
            },
            "bounds_from": "the manifest's parity thresholds (export.validate.variant_problems, as `make export` gates)",
        },
    }
    if problems:
        raise RuntimeError("fp16 on the GPU fails the export's parity bounds: " + "; ".join(problems))


def cross_encoder(source: str, *, fp16: bool, max_length: int) -> Any:
    """sentence-transformers' CrossEncoder on the GPU (CPU in a smoke run), raw logits (no activation): the
    same calls on sentence-transformers 5.x (this venv) and 6.x (the GPU image)."""
    import torch
    from sentence_transformers import CrossEncoder

    device = "cuda" if REQUIRE_CUDA else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} has no CUDA")
    model = CrossEncoder(source, device=device, max_length=max_length, activation_fn=torch.nn.Identity())
    if fp16:
        (model if isinstance(model, torch.nn.Module) else model.model).half()
    return model


def section_baseline(bare: Bare, source: str | None, requests: Requests, results: dict[str, Any]) -> None:
    """The torch baseline computes the same function as the exported graph: sentence-transformers fp32 and fp16
    against the fp32 ONNX on the CUDA provider, on every pair whose document fits one window (there the
    gateway's ids and sentence-transformers' are the same), within the export's fp16 bounds."""
    import importlib.metadata as md

    from export.validate import compare, variant_problems

    if source is None:
        raise RuntimeError("no baseline weights (the bundle could not derive them): no torch baseline")
    s32 = cuda_session(variant_file(bare.spec, "fp32"), threads=os.cpu_count() or 1)
    pairs: list[tuple[str, str]] = []
    onnx: list[np.ndarray] = []
    groups: list[int] = []
    for q, (query, docs) in enumerate(requests):
        encoded = bare.encode(query, docs)
        whole = [w for w in encoded.windows if not encoded.truncated[w.doc]]
        onnx.append(bare.score(s32, whole))
        pairs += [(query, docs[w.doc]) for w in whole]
        groups += [q] * len(whole)
    reference = np.concatenate(onnx)
    thresholds = bare.thresholds()
    found: dict[str, Any] = {
        "sentence_transformers": md.version("sentence-transformers"),
        "transformers": md.version("transformers"),
        "source": source,
        "pairs": len(pairs),
        "queries": len(requests),
    }
    problems: list[str] = []
    for precision in ("fp32", "fp16"):
        model = cross_encoder(source, fp16=precision == "fp16", max_length=bare.spec.max_length)
        scores = np.asarray(model.predict(pairs, batch_size=64, show_progress_bar=False), dtype=np.float32)
        figures = compare(reference, scores.reshape(-1), groups)
        found[f"st_{precision}_vs_onnx_fp32"] = figures
        problems += [
            f"sentence-transformers {precision}: {p}" for p in variant_problems("fp16", figures, thresholds)
        ]
        del model
    found["gate"] = {"passed": not problems, "problems": problems, "bounds": "the export's fp16 bounds"}
    results["baseline"] = found
    if problems:
        raise RuntimeError(
            "the torch baseline does not compute the exported function: " + "; ".join(problems)
        )


def long_documents(docs: Sequence[str]) -> list[str]:
    """Each document repeated until it is well past 512 tokens: every pair is cut at the model's cap."""
    return [" ".join([d] * max(1, 6000 // max(1, len(d)))) for d in docs]


def section_oom(repository: Path, requests: Sequence[tuple[str, list[str]]], results: dict[str, Any]) -> None:
    from fastapi.testclient import TestClient
    from prometheus_client import REGISTRY

    from gateway.app import create_app
    from gateway.repository import read_model_spec

    spec = read_model_spec(repository, "reranker")
    variant = "fp16" if spec.variant_path("fp16") else "fp32"
    path = spec.variant_path(variant)
    assert path is not None
    threads = os.cpu_count() or 1
    weights = path.stat().st_size
    limit = None
    tried: list[str] = []
    small = {name: np.ones((1, 16), dtype=np.int64) for name in spec.input_names}
    big = {name: np.ones((32, max(BARE_TOKENS)), dtype=np.int64) for name in spec.input_names}
    big_fails = None
    for extra_mb in (8, 32, 128, 512):
        candidate = weights + extra_mb * MiB
        try:
            probe = cuda_session(path, threads=threads, mem_limit_bytes=candidate)
            probe.run(None, small)
        except Exception as exc:
            tried.append(f"{candidate // MiB} MiB: {str(exc).splitlines()[0][:120] if str(exc) else exc}")
            continue
        try:
            probe.run(None, big)
            big_fails = False
        except Exception:
            big_fails = True
        del probe
        limit = candidate
        break
    if limit is None:
        raise RuntimeError(f"no gpu_mem_limit let a session start: {tried}")
    sessions: list[RecordingSession] = []

    def limited(p: Path, *, device: str, threads: int) -> RecordingSession:
        session = RecordingSession(cuda_session(p, threads=threads, mem_limit_bytes=limit))
        sessions.append(session)
        return session

    labels = {
        "from_backend": "onnx-cuda",
        "to_backend": "onnx-cpu",
        "reason": "cuda_oom",
        "model": "reranker",
    }
    before = REGISTRY.get_sample_value("reranker_fallbacks_total", labels) or 0.0
    settings = settings_for(repository, preload=True)
    reranker = reranker_for(settings, session_factory=limited)
    query, docs = requests[0]
    documents = long_documents(docs)
    statuses: list[int] = []
    with TestClient(create_app(settings, reranker)) as client:
        assert reranker.models is not None
        cuda = reranker.models.device_report.get("cuda")
        if REQUIRE_CUDA and cuda != "used":
            raise RuntimeError(f"the memory-limited CUDA session was not taken: {cuda}")
        backend = None
        for _ in range(2):
            r = client.post("/rerank", json={"query": query, "documents": documents})
            statuses.append(r.status_code)
            if r.status_code == 200:
                backend = r.json().get("backend")
        metrics_text = client.get("/metrics").text
    calls = sessions[0].calls if sessions else []
    evidence = oom_evidence(calls, metrics_text, before)
    results["oom"] = {
        "variant": variant,
        "gpu_mem_limit_mb": limit // MiB,
        "limits_refused": tried,
        "a_32x512_batch_fails_alone": big_fails,
        "documents": len(documents),
        "requests": len(statuses),
        "status": statuses[-1] if statuses else None,
        "failed_requests": sum(1 for s in statuses if s != 200),
        "backend": backend,
        "gpu_calls": calls[:40],
        **evidence,
    }
    asyncio.run(reranker.close())
    problems = oom_problems(results["oom"])
    if REQUIRE_CUDA and problems:
        raise RuntimeError("the forced CUDA OOM did not take the documented path: " + "; ".join(problems))


def oom_problems(found: dict[str, Any]) -> list[str]:
    """What the forced OOM must show: no request failed, a failed GPU batch retried in halves, the rest
    scored on the CPU and counted as `cuda_oom` (the first H200 run showed none of the last two: the
    arena's refusal was not read as an OOM)."""
    problems = []
    if found.get("failed_requests"):
        problems.append(f"{found['failed_requests']} of {found['requests']} requests failed")
    if not found.get("halved"):
        problems.append("no failed GPU batch was retried in halves")
    if not found.get("fallbacks_cuda_oom"):
        problems.append('no CUDA -> CPU fallback counted with reason="cuda_oom"')
    return problems


FALLBACK_LINE = re.compile(
    r'^reranker_fallbacks_total\{(?=[^}]*from_backend="onnx-cuda")(?=[^}]*to_backend="onnx-cpu")'
    r'(?=[^}]*reason="cuda_oom")[^}]*\}\s+(\S+)$',
    re.M,
)


def oom_evidence(calls: Sequence[dict[str, Any]], metrics_text: str, before: float = 0.0) -> dict[str, Any]:
    """What the forced OOM showed: a failed GPU batch later retried as one of its halves (same width; not always
    the next call: on the H200 the request's four batches failed first, then their halves), and the CUDA -> CPU
    fallbacks counted in /metrics (the exposition text, less `before`, the count before the requests)."""
    halved = any(
        a["outcome"] == "failed"
        and a["rows"] > 1
        and any(
            b["width"] == a["width"] and b["rows"] in (a["rows"] // 2, a["rows"] - a["rows"] // 2)
            for b in calls[i + 1 :]
        )
        for i, a in enumerate(calls)
    )
    found = FALLBACK_LINE.search(metrics_text)
    return {
        "halved": halved,
        "gpu_calls_failed": sum(1 for c in calls if c["outcome"] == "failed"),
        "fallbacks_cuda_oom": (float(found.group(1)) if found else 0.0) - before,
        "metrics_line": found.group(0) if found else None,
    }


def other_fp16(spec: Any, folder: Path) -> tuple[str, Path] | None:
    """The repository's fp32 graph converted to the fp16 file the export did not choose, written in `folder` (the
    caller's temporary folder), so that both are timed side by side: unfused where the repository's fp16 file is fused for the CUDA provider
    (its manifest's `gpu_fusion`), fused (`--fp16-gpu-fusion`) where it is not and onnxruntime's optimizer knows
    the model type; None otherwise."""
    from export.quantize import GpuFusion, convert_fp16, fusion_unsupported

    manifest = json.loads((spec.folder / "manifest.json").read_text())
    entry = manifest["variants"].get("fp16")
    fp32 = manifest["variants"]["fp32"]
    if entry is None or fp32.get("external_data"):
        return None
    out = folder / "model.onnx"
    if entry.get("gpu_fusion"):
        convert_fp16(variant_file(spec, "fp32"), out)
        return UNFUSED_FP16, out
    model_type = str(manifest.get("model_type", ""))
    if fusion_unsupported(model_type) is not None:
        return None
    # 0 heads / hidden size: the optimizer reads them off the graph
    convert_fp16(variant_file(spec, "fp32"), out, GpuFusion(model_type, num_heads=0, hidden_size=0))
    return FUSED_FP16, out


UNFUSED_FP16 = "fp16 unfused"
FUSED_FP16 = "fp16 fused for CUDA (--fp16-gpu-fusion)"


def section_bare(bare: Bare, source: str | None, requests: Requests, results: dict[str, Any]) -> None:
    """Every pair cut at 128 and at 512 tokens, best of a few batch sizes: ORT CUDA fp16/fp32 vs torch fp16."""
    from gateway.tokenization import build_batch

    query, docs = requests[0]
    texts = long_documents(docs)
    threads = os.cpu_count() or 1
    found: dict[str, Any] = {"batches_tried": list(BARE_BATCHES), "tokens": {}}
    results["bare"] = found

    def best_of(run: Callable[[int], None]) -> dict[str, Any]:
        best: dict[str, Any] = {"pairs_per_s": 0.0, "batch": None}
        for b in BARE_BATCHES:
            run(b)  # warm-up at this shape
            n, started = 0, time.perf_counter()
            while time.perf_counter() - started < BARE_SECONDS:
                run(b)
                n += b
            rate = n / (time.perf_counter() - started)
            if rate > best["pairs_per_s"]:
                best = {"pairs_per_s": rate, "batch": b}
        return best

    model, model_error = None, "no baseline weights"
    if source is not None:
        try:
            model = cross_encoder(source, fp16=True, max_length=bare.spec.max_length)
        except Exception as exc:
            model_error = f"{type(exc).__name__}: {str(exc)[:300]}"
    # the other fp16 file, converted once and timed at each length; its folder goes when the section ends
    with tempfile.TemporaryDirectory(prefix="other-fp16-") as work:
        other = other_fp16(bare.spec, Path(work))
        for tokens in BARE_TOKENS:
            windows = [w for w in bare.windows(query, texts, max_length=tokens) if len(w.ids) == tokens]
            if not windows:
                raise RuntimeError(f"no pair reaches {tokens} tokens")
            windows = (windows * (max(BARE_BATCHES) // len(windows) + 1))[: max(BARE_BATCHES)]
            contenders: dict[str, dict[str, Any]] = {}
            for variant in ("fp16", "fp32", *([other[0]] if other else [])):
                try:
                    path = other[1] if other and variant == other[0] else variant_file(bare.spec, variant)
                    session = cuda_session(path, threads=threads)
                except Exception as exc:
                    contenders[f"onnx-cuda {variant}"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                    continue
                feeds = {
                    b: build_batch(windows[:b], bare.names, bare.tok.pad_id).inputs for b in BARE_BATCHES
                }

                def ort_run(b: int, session: Any = session, feeds: dict[int, Any] = feeds) -> None:
                    session.run(["logits"], feeds[b])

                contenders[f"onnx-cuda {variant}"] = best_of(ort_run)
                del session
            if model is None:
                contenders[TORCH_FP16] = {"error": model_error}
            else:
                import torch

                device = "cuda" if REQUIRE_CUDA else "cpu"
                texts_b = [(query, t) for t in texts] * (max(BARE_BATCHES) // len(texts) + 1)
                features = {
                    b: model.tokenizer(
                        [q for q, _ in texts_b[:b]], [t for _, t in texts_b[:b]], truncation="only_second",
                        max_length=tokens, padding="max_length", return_tensors="pt",
                    ).to(device)
                    for b in BARE_BATCHES
                }  # fmt: skip

                def torch_run(b: int, features: dict[int, Any] = features) -> None:
                    with torch.inference_mode():
                        model.model(**features[b]).logits.float().cpu()

                contenders[TORCH_FP16] = best_of(torch_run)
            base = contenders.get(TORCH_FP16, {}).get("pairs_per_s")
            for row in contenders.values():
                if base and row.get("pairs_per_s"):
                    row["vs_torch_fp16"] = row["pairs_per_s"] / base
            found["tokens"][str(tokens)] = contenders
            nothing_measured(contenders)


def section_padding(bare: Bare, requests: Sequence[tuple[str, list[str]]], results: dict[str, Any]) -> None:
    path = variant_file(bare.spec, "fp16")
    session = cuda_session(path, threads=os.cpu_count() or 1)
    seconds: dict[str, float] = {}
    padded: dict[str, int] = {}
    batches: dict[str, int] = {}
    real = 0
    for q, (query, docs) in enumerate(requests):
        windows = bare.windows(query, docs)
        lengths = [len(w.ids) for w in windows]
        real += sum(lengths)
        plans = padding_plans(lengths, budgets=GPU_BUDGETS)
        names = list(plans)
        shift = q % len(names)
        for name in names[shift:] + names[:shift]:
            built = bare.batches(windows, plans[name])
            if q == 0:  # warm-up: the CUDA provider's first run at a shape is slow
                for _, b in built:
                    session.run(["logits"], b.inputs)
            started = time.perf_counter()
            for _, b in built:
                session.run(["logits"], b.inputs)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
            padded[name] = padded.get(name, 0) + padded_tokens(lengths, plans[name])
            batches[name] = batches.get(name, 0) + len(plans[name])
    pairs = sum(len(d) for _, d in requests)
    results["padding"] = {
        "variant": path.name,
        "pairs": pairs,
        "strategies": {
            name: {
                "seconds": s,
                "batches": batches[name],
                "pairs_per_s": pairs / s,
                "padded_tokens_per_real_token": padded[name] / real,
                "speed_vs_unpadded": seconds["unpadded"] / s,
            }
            for name, s in seconds.items()
        },
    }


# --- Triton ----------------------------------------------------------------------------------------


def triton_servers() -> list[tuple[Path, list[str]]]:
    """(server folder, its backends) of every tritonserver found: NGC's /opt/tritonserver, one on PATH, the
    local one `make triton-setup` unpacks from the nvidia-pytriton wheel."""
    candidates = [Path("/opt/tritonserver")]
    on_path = shutil.which("tritonserver")
    if on_path:
        candidates.append(Path(on_path).resolve().parent.parent)
    candidates.append(REPO_ROOT / ".triton" / "server" / "pytriton" / "tritonserver")
    found: list[tuple[Path, list[str]]] = []
    for folder in dict.fromkeys(candidates):
        if (folder / "bin" / "tritonserver").exists():
            backends = (
                sorted(p.name for p in (folder / "backends").iterdir())
                if (folder / "backends").is_dir()
                else []
            )
            found.append((folder, backends))
    return found


def gpu_triton_repository(repository: Path, target: Path) -> Path:
    """A copy of the reranker's folder whose configs/ holds the GPU config (`gpu-trt`: as exported, with the
    TensorRT accelerator) and the same without the accelerator (`gpu`: the CUDA provider, dynamic batching)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    source = repository / "reranker"
    model = target / "reranker"
    if target.exists():
        shutil.rmtree(target)
    (model / "configs").mkdir(parents=True)
    for item in ("1", "tokenizer", "manifest.json"):
        (model / item).symlink_to((source / item).resolve())
    text = (source / "config.pbtxt").read_text()
    (model / "configs" / "gpu-trt.pbtxt").write_text(text)
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    config.optimization.execution_accelerators.ClearField("gpu_execution_accelerator")
    (model / "configs" / "gpu.pbtxt").write_text(text_format.MessageToString(config))
    return target


Contender = Callable[[str, list[str]], Awaitable[None]]
Builder = Callable[[], Awaitable[Contender]]


def contender_builders(
    repository: Path, bare: Bare, source: str | None, closers: list[Callable[[], Awaitable[None]]]
) -> dict[str, Builder]:
    """The gateway's pipeline on the CUDA provider (its fp16 file, and the fp32 file through a session factory)
    and sentence-transformers fp16: what the speed section interleaves and each memory child loads alone."""
    from gateway.backends.onnx_local import make_session

    def fp32_session(path: Path, *, device: str, threads: int) -> Any:
        return make_session(variant_file(bare.spec, "fp32"), device=device, threads=threads)

    builders: dict[str, Builder] = {
        FP16_PIPELINE: pipeline_builder(settings_for(repository), closers, variant="fp16"),
        FP32_PIPELINE: pipeline_builder(
            settings_for(repository), closers, variant="fp32", session_factory=fp32_session
        ),
    }
    if source is not None:

        async def build_torch() -> Contender:
            model = cross_encoder(source, fp16=True, max_length=bare.spec.max_length)

            async def run(query: str, docs: list[str]) -> None:
                model.predict([(query, d) for d in docs], batch_size=64, show_progress_bar=False)

            return run

        builders[TORCH_FP16] = build_torch
    return builders


def pipeline_builder(
    settings: Any,
    closers: list[Callable[[], Awaitable[None]]],
    variant: str | None = None,
    **loader_args: Any,
) -> Builder:
    """A Reranker over `settings`; each request must be served by the expected backend alone, and the fp16
    contender must have loaded the fp16 file (else it measures another file under its name)."""

    async def build() -> Contender:
        from gateway.domain import RerankQuery

        if variant is not None:
            variant_file(Bare(settings.model_repository).spec, variant)
        reranker = reranker_for(settings, **loader_args)
        closers.append(reranker.close)
        models = await reranker.load()
        if REQUIRE_CUDA and not settings.triton_url and models.device_report.get("cuda") != "used":
            raise RuntimeError(f"not on the GPU: {models.device_report.get('cuda')}")
        if REQUIRE_CUDA and variant == "fp16" and models.reranker.variant != "fp16":
            raise RuntimeError(f"the loader took {models.reranker.variant}, not fp16")
        expected = "triton" if settings.triton_url else ("onnx-cuda" if REQUIRE_CUDA else "onnx")

        async def run(query: str, docs: list[str]) -> None:
            outcome = await reranker.rerank(RerankQuery(query, tuple(docs)))
            if not served_only_by(outcome.backend, expected):
                # a fallback served (part of) it: these would be another backend's figures
                raise RuntimeError(f"scored by {outcome.backend}, not {expected} alone")

        return run

    return build


async def section_speed(
    contenders: dict[str, Builder], requests: Requests, warmup: int, results: dict[str, Any]
) -> None:
    built: dict[str, Contender] = {}
    rows: dict[str, dict[str, Any]] = {}
    for name, build in contenders.items():
        try:
            run = await build()
            for query, docs in requests[:warmup]:
                await run(query, docs)
        except Exception as exc:
            rows[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            log(f"speed: {name} not measured: {exc}")
            continue
        built[name] = run
        rows[name] = {}
    latencies: dict[str, list[float]] = {name: [] for name in built}
    names = list(built)
    for i, (query, docs) in enumerate(requests):
        order = names[i % len(names) :] + names[: i % len(names)] if names else []
        for name in order:
            if "error" in rows[name]:
                continue
            started = time.perf_counter()
            try:
                await built[name](query, docs)
            except Exception as exc:  # one request served otherwise voids the row: no partial figures
                rows[name] = {"error": f"request {i}: {type(exc).__name__}: {str(exc)[:300]}"}
                continue
            latencies[name].append(time.perf_counter() - started)
    pairs = sum(len(d) for _, d in requests)
    for name, values in latencies.items():
        if "error" in rows[name] or not values:
            continue
        rows[name].update(
            {
                "p50_ms": 1000 * statistics.median(values),
                "p99_ms": 1000 * percentile(values, 99),
                "pairs_per_s": pairs / sum(values),
            }
        )
    base = rows.get(TORCH_FP16, {}).get("pairs_per_s")
    for row in rows.values():
        if base and "pairs_per_s" in row:
            row["vs_torch_fp16"] = row["pairs_per_s"] / base
    results["speed"] = {
        "requests": len(requests),
        "docs_per_request": len(requests[0][1]),
        "warmup": warmup,
        "contenders": rows,
    }
    nothing_measured(rows)


# --- memory: one fresh process per contender ---------------------------------------------------------------


async def memory_of(name: str, repository: Path, source: str | None, requests: Requests) -> dict[str, Any]:
    """In a process that has touched no GPU yet: the device's used memory before, and after the contender
    loaded and served MEMORY_WARMUP requests (plus torch's allocator peak and NVML's own count of this process
    where they exist)."""
    before = used_mb()
    closers: list[Callable[[], Awaitable[None]]] = []
    builders = contender_builders(repository, Bare(repository), source, closers)
    if name not in builders:
        raise RuntimeError(f"no contender {name!r} here (torch baseline missing?)")
    run = await builders[name]()
    for query, docs in requests[:MEMORY_WARMUP]:
        await run(query, docs)
    after = used_mb()
    found: dict[str, Any] = {
        "device_used_delta_mb": None if before is None or after is None else after - before,
        "this_process_mb": (nvml_info().get("this_process_mb") if after is not None else None),
    }
    if name == TORCH_FP16:
        import torch

        if torch.cuda.is_available():
            found["torch_max_allocated_mb"] = torch.cuda.max_memory_allocated() // MiB
            found["torch_max_reserved_mb"] = torch.cuda.max_memory_reserved() // MiB
    for close in closers:
        await close()
    return found


def section_memory(args: argparse.Namespace, names: Sequence[str], results: dict[str, Any]) -> None:
    rows: dict[str, Any] = {}
    results["memory"] = {
        "how": f"a fresh process per contender: device memory used after it loaded and served {MEMORY_WARMUP} "
        "requests, less before it touched the GPU (CUDA context included)",
        "contenders": rows,
    }
    for name in names:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            command = [
                sys.executable, "-m", "bench.gpu_measure", "--memory-child", name, "--model-repository",
                str(args.model_repository), "--data", str(args.data), "--out", out.name,
                "--requests", str(MEMORY_WARMUP), "--parity-queries", "1",
                *(["--baseline", str(args.baseline)] if args.baseline else []),
                *([] if REQUIRE_CUDA else ["--no-require-cuda"]),
            ]  # fmt: skip
            done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
            text = Path(out.name).read_text() if Path(out.name).stat().st_size else ""
        rows[name] = (
            json.loads(text)
            if done.returncode == 0 and text
            else {"error": (done.stderr or done.stdout).strip()[-400:] or f"exit {done.returncode}"}
        )
    nothing_measured(rows)


# --- the run ---------------------------------------------------------------------------------------


class Run:
    """The results of one run, written (JSON and gpu.md) after every section."""

    def __init__(self, out: Path, results: dict[str, Any]) -> None:
        self.out = out
        self.results = results
        self.started = time.perf_counter()

    def save(self) -> None:
        self.results["seconds"] = round(time.perf_counter() - self.started, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.out.with_suffix(".tmp")
        scratch.write_text(json.dumps(self.results, indent=1, default=str) + "\n")
        scratch.replace(self.out)  # a reader (or a kill) never sees half a file
        self.out.with_suffix(".md").write_text(write_markdown(self.results))

    def section(self, name: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        log(f"{name} ...")
        try:
            return fn()
        except Exception as exc:
            self.results.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
            log(f"{name} FAILED:\n{traceback.format_exc()}")
            return None
        finally:
            self.results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - started, 1)
            self.save()


def baseline_source(args: argparse.Namespace, repository: Path) -> str | None:
    """What sentence-transformers loads: --baseline, else the manifest's source (a relative path from the
    model's folder, as a carried repository records it), when it is there."""
    if args.baseline:
        return str(args.baseline)
    from bench.models import source_of

    folder = repository / "reranker"
    source = source_of(json.loads((folder / "manifest.json").read_text()), folder)
    if source.startswith(("/", ".")) and not Path(source).exists():
        return None
    return source


def triton_contenders(
    repository: Path, triton_notes: dict[str, Any], closers: list[Callable[[], Awaitable[None]]]
) -> tuple[dict[str, Builder], list[Any]]:
    servers = triton_servers()
    usable = [(folder, backends) for folder, backends in servers if "onnxruntime" in backends]
    triton_notes["backends"] = {str(f): b for f, b in servers}
    if not servers:
        triton_notes["notes"].append(
            "no tritonserver on this machine (`make triton-setup` unpacks the nvidia-pytriton one): Triton "
            "not measured"
        )
    elif not usable:
        triton_notes["notes"].append(
            "no tritonserver here has an onnxruntime backend (the local one from nvidia-pytriton has only "
            f"{', '.join(sorted({b for _, bs in servers for b in bs})) or 'no'} backend(s)): Triton's GPU config "
            "(onnxruntime_onnx on KIND_GPU, dynamic batching) and its TensorRT accelerator cannot run; not "
            "measured. NGC's tritonserver image has both backends."
        )
    builders: dict[str, Builder] = {}
    started: list[Any] = []
    if not usable:
        return builders, started
    from export.triton_local import TritonInstall, TritonServer

    folder, _ = usable[0]
    triton_repo = gpu_triton_repository(repository, REPO_ROOT / "bench" / ".work" / "gpu-triton-repo")
    install = TritonInstall(root=folder.parent, server_dir=folder, stub_env=Path(sys.prefix), library_dirs=())
    # `gpu-trt` needs TensorRT inside the server's onnxruntime backend: a failed start is reported
    for config in ("gpu", "gpu-trt"):
        server = TritonServer(
            install, triton_repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
            model_config_name=config, log_path=REPO_ROOT / "bench" / ".work" / f"triton-{config}.log",
        )  # fmt: skip
        try:
            server.start()
            started.append(server)
            server.wait_ready(240)  # the TensorRT engine is built at load
        except Exception as exc:
            triton_notes["notes"].append(f"Triton `{config}` did not start: {exc}")
            continue
        label = "Triton GPU + TensorRT fp16" if config == "gpu-trt" else "Triton GPU (CUDA, dynamic batching)"
        builders[label] = pipeline_builder(
            settings_for(repository, triton_url=server.grpc_url, triton_timeout_s=60), closers
        )
    return builders, started


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_measure")
    ap.add_argument("--model-repository", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument(
        "--out", type=Path, required=True, help="gpu.json (gpu.md beside it), rewritten per section"
    )
    ap.add_argument("--baseline", type=Path, default=None, help="the folder sentence-transformers loads")
    ap.add_argument("--context", default="{}")
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--parity-queries", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--no-require-cuda", action="store_true", help=argparse.SUPPRESS)  # CPU smoke runs only
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    global REQUIRE_CUDA
    args = parse_args(argv)
    if args.no_require_cuda:
        REQUIRE_CUDA = False
    repository = args.model_repository
    scifact = load_set(args.data, "scifact")
    requests = [
        (c.query, scifact.texts(c, 100)) for c in scifact.first(max(args.requests, args.parity_queries))
    ]
    source = baseline_source(args, repository)
    if args.memory_child:
        found = asyncio.run(memory_of(args.memory_child, repository, source, requests))
        args.out.write_text(json.dumps(found) + "\n")
        return 0
    context = json.loads(args.context)
    try:
        machine: dict[str, Any] = {**nvml_info(), "cpus": os.cpu_count()}
    except Exception as exc:
        if REQUIRE_CUDA:
            raise
        machine = {"gpu": f"none ({type(exc).__name__})", "driver": "-", "cpus": os.cpu_count()}
    run = Run(
        args.out,
        {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "complete": False,
            "machine": machine,
            "versions": library_versions(),
            "model": context.get("model"),
            "baseline_source": source,
            "install": context.get("install"),
            "preflight": context.get("preflight"),
            "notes": [
                "the gateway's CUDA session is gateway.backends.onnx_local.make_session, which preloads "
                "pip-installed CUDA/cuDNN (onnxruntime.preload_dlls) and takes a gpu_mem_limit; every CUDA "
                "session here is built by it (the forced OOM passes the limit)"
            ],
        },
    )
    results = run.results
    run.save()

    def provider() -> None:
        reranker = asyncio.run(section_provider(repository, results))
        if reranker is not None:
            asyncio.run(reranker.close())  # rebuilt inside the speed loop's event loop below

    run.section("provider", provider)
    bare = Bare(repository)
    run.section("placement", lambda: section_placement(bare, requests, results))
    run.section("parity", lambda: section_parity(bare, requests[: args.parity_queries], results))
    run.section("baseline", lambda: section_baseline(bare, source, requests[:BASELINE_QUERIES], results))
    run.section("oom", lambda: section_oom(repository, requests, results))
    run.section("bare", lambda: section_bare(bare, source, requests, results))
    run.section("padding", lambda: section_padding(bare, requests[:10], results))
    triton_notes: dict[str, Any] = {"notes": []}
    results["triton"] = triton_notes

    async def speed() -> None:
        closers: list[Callable[[], Awaitable[None]]] = []
        contenders = contender_builders(repository, bare, source, closers)
        servers: list[Any] = []
        try:
            extra, servers = triton_contenders(repository, triton_notes, closers)
            contenders.update(extra)
            await section_speed(contenders, requests[: args.requests], args.warmup, results)
        finally:
            for close in closers:
                await close()
            for server in servers:
                server.stop()

    run.section("speed", lambda: asyncio.run(speed()))
    names = [FP16_PIPELINE, FP32_PIPELINE, *([TORCH_FP16] if source else [])]
    run.section("memory", lambda: section_memory(args, names, results))
    results["complete"] = True
    run.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
