"""The measuring half of `make gpu-check`: run by `bench.gpu_check run` in a fresh process after the install.

Drives the gateway through its public pieces only: `gateway.loading.ModelLoader` (with a session
factory where a section needs other CUDA provider options), `gateway.pipeline.Reranker`,
`gateway.app.create_app`, `gateway.tokenization`. Every section records its own failure in `errors` and the
next one runs; the JSON is written even when some fail. See bench/gpu_check.py for what each section shows.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import socket
import statistics
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.data import load_set
from bench.gpu_check import REPO_ROOT, log
from bench.padding import padded_tokens, padding_plans

MiB = 1 << 20
GPU_BUDGETS = (4096, 16384)  # the gateway's gpu_token_budget default is the second
BARE_BATCHES = (32, 64, 128)
BARE_TOKENS = 512
BARE_SECONDS = 2.0  # timed per batch size and contender
# Every session and pipeline a section times must really run on CUDA (onnxruntime-gpu falls back to the CPU
# silently): a CPU figure under a GPU heading is worse than none. Only a CPU smoke run of this module sets it off.
REQUIRE_CUDA = True


def check_on_cuda(what: str, provider: str) -> None:
    if REQUIRE_CUDA and provider != "CUDAExecutionProvider":
        raise RuntimeError(f"{what} runs on {provider}, not on CUDA: not measured")


# --- helpers ---------------------------------------------------------------------------------------


def nvml_info() -> dict[str, Any]:
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        name = pynvml.nvmlDeviceGetName(handle)
        driver = pynvml.nvmlSystemGetDriverVersion()
        return {
            "gpu": name.decode() if isinstance(name, bytes) else str(name),
            "driver": driver.decode() if isinstance(driver, bytes) else str(driver),
            "used_mb": int(mem.used) // MiB,
            "total_mb": int(mem.total) // MiB,
        }
    finally:
        pynvml.nvmlShutdown()


def used_mb() -> int:
    return int(nvml_info()["used_mb"])


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

    def windows(self, query: str, docs: Sequence[str]) -> list[Any]:
        return list(self.tok.encode_pairs(query, list(docs)).windows)

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


# --- sections ---------------------------------------------------------------------------------------


async def section_provider(repository: Path, results: dict[str, Any]) -> Any:
    from gateway.loading import ModelLoader
    from gateway.pipeline import PipelineConfig, Reranker

    settings = settings_for(repository)
    reranker = Reranker(PipelineConfig.from_settings(settings), ModelLoader.from_settings(settings))
    models = await reranker.load()
    scorer = models.reranker.scorer
    primary = getattr(scorer, "primary", scorer)
    session = getattr(primary, "session", None)
    import onnxruntime as ort

    versions: dict[str, Any] = {"onnxruntime": ort.__version__}
    try:
        import torch

        versions["torch"] = torch.__version__
    except ImportError:
        versions["torch"] = None
    results["provider"] = {
        "device_report": models.device_report,
        "scorer": scorer.name,
        "variant": models.reranker.variant,
        "session_providers": session.get_providers() if session is not None else None,
        **versions,
    }
    if REQUIRE_CUDA and models.device_report.get("cuda") != "used":
        await reranker.close()
        raise RuntimeError(f"the gateway's loader did not take the GPU: {models.device_report.get('cuda')}")
    return reranker


def section_parity(bare: Bare, requests: Sequence[tuple[str, list[str]]], results: dict[str, Any]) -> None:
    from gateway.assembly import sigmoid

    fp16_path, fp32_path = bare.spec.variant_path("fp16"), bare.spec.variant_path("fp32")
    if fp16_path is None or fp32_path is None:
        raise RuntimeError("the repository has no fp16 or no fp32 file")
    threads = os.cpu_count() or 1
    s16 = cuda_session(fp16_path, threads=threads)
    s32 = cuda_session(fp32_path, threads=threads)
    diffs: list[np.ndarray] = []
    top10: list[float] = []
    top1: list[float] = []
    ties32 = ties16 = 0
    dtype = str(s16.get_outputs()[0].type)
    for query, docs in requests:
        windows = bare.windows(query, docs)
        a, b = bare.score(s16, windows), bare.score(s32, windows)
        diffs.append(np.abs(a - b))
        k = min(10, a.size)
        top10.append(len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k)
        top1.append(float(np.argmax(a) == np.argmax(b)))
        ties32 += ties(sigmoid(a))
        half = a.astype(np.float16)
        ties16 += ties((np.float16(1) / (np.float16(1) + np.exp(-half))).astype(np.float16))
    every = np.concatenate(diffs)
    results["parity"] = {
        "queries": len(requests),
        "docs_per_query": len(requests[0][1]),
        "max_abs_diff": float(every.max()),
        "mean_abs_diff": float(every.mean()),
        "top10_agreement": float(np.mean(top10)),
        "top1_agreement": float(np.mean(top1)),
        "logits_dtype": dtype,
        "ties_fp32_sigmoid": ties32,
        "ties_fp16_sigmoid": ties16,
        "providers": {"fp16": s16.get_providers()[0], "fp32": s32.get_providers()[0]},
    }


def long_documents(docs: Sequence[str]) -> list[str]:
    """Each document repeated until it is well past 512 tokens: every pair is cut at the model's cap."""
    return [" ".join([d] * max(1, 6000 // max(1, len(d)))) for d in docs]


def section_oom(repository: Path, requests: Sequence[tuple[str, list[str]]], results: dict[str, Any]) -> None:
    from fastapi.testclient import TestClient
    from prometheus_client import REGISTRY

    from gateway.app import create_app
    from gateway.loading import ModelLoader
    from gateway.pipeline import PipelineConfig, Reranker
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
    big = {name: np.ones((32, BARE_TOKENS), dtype=np.int64) for name in spec.input_names}
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
    reranker = Reranker(
        PipelineConfig.from_settings(settings), ModelLoader.from_settings(settings, session_factory=limited)
    )
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


FALLBACK_LINE = re.compile(
    r'^reranker_fallbacks_total\{(?=[^}]*from_backend="onnx-cuda")(?=[^}]*to_backend="onnx-cpu")'
    r'(?=[^}]*reason="cuda_oom")[^}]*\}\s+(\S+)$',
    re.M,
)


def oom_evidence(calls: Sequence[dict[str, Any]], metrics_text: str, before: float = 0.0) -> dict[str, Any]:
    """What the forced OOM showed: a failed GPU batch followed by one of its halves, and the CUDA -> CPU
    fallbacks counted in /metrics (the exposition text, less `before`, the count before the requests)."""
    halved = any(
        a["outcome"] == "failed" and b["rows"] in (a["rows"] // 2, a["rows"] - a["rows"] // 2)
        for a, b in itertools.pairwise(calls)
    )
    found = FALLBACK_LINE.search(metrics_text)
    return {
        "halved": halved,
        "gpu_calls_failed": sum(1 for c in calls if c["outcome"] == "failed"),
        "fallbacks_cuda_oom": (float(found.group(1)) if found else 0.0) - before,
        "metrics_line": found.group(0) if found else None,
    }


Contender = Callable[[str, list[str]], Awaitable[None]]


def torch_cross_encoder(source: str) -> Any:
    import torch
    from sentence_transformers import CrossEncoder

    if not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} has no CUDA")
    model = CrossEncoder(source, device="cuda", max_length=BARE_TOKENS)
    model.model.half()
    return model


async def section_speed(
    contenders: dict[str, Callable[[], Awaitable[Contender]]],
    requests: Sequence[tuple[str, list[str]]],
    warmup: int,
    results: dict[str, Any],
) -> None:
    built: dict[str, Contender] = {}
    rows: dict[str, dict[str, Any]] = {}
    for name, build in contenders.items():
        before = used_mb()
        try:
            run = await build()
            for query, docs in requests[:warmup]:
                await run(query, docs)
        except Exception as exc:
            rows[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            log(f"speed: {name} not measured: {exc}")
            continue
        built[name] = run
        rows[name] = {"gpu_memory_mb": used_mb() - before}
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
            except Exception as exc:
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
    base = rows.get("torch fp16 CrossEncoder", {}).get("pairs_per_s")
    for row in rows.values():
        if base and "pairs_per_s" in row:
            row["vs_torch_fp16"] = row["pairs_per_s"] / base
    results["speed"] = {
        "requests": len(requests),
        "docs_per_request": len(requests[0][1]),
        "warmup": warmup,
        "contenders": rows,
    }


def section_bare_512(
    bare: Bare, source: str, requests: Sequence[tuple[str, list[str]]], results: dict[str, Any]
) -> None:
    """Every pair cut at 512 tokens, best of a few batch sizes: ORT CUDA fp16/fp32 vs torch fp16 (bare calls)."""
    from gateway.tokenization import build_batch

    query, docs = requests[0]
    texts = long_documents(docs)
    windows = [w for w in bare.windows(query, texts) if len(w.ids) == BARE_TOKENS]
    if len(windows) < max(BARE_BATCHES):
        windows = (windows * (max(BARE_BATCHES) // max(1, len(windows)) + 1))[: max(BARE_BATCHES)]
    threads = os.cpu_count() or 1
    contenders: dict[str, dict[str, Any]] = {}

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

    for variant in ("fp16", "fp32"):
        path = bare.spec.variant_path(variant)
        if path is None:
            contenders[f"onnx-cuda {variant}"] = {"error": "not exported"}
            continue
        session = cuda_session(path, threads=threads)
        feeds = {b: build_batch(windows[:b], bare.names, bare.tok.pad_id).inputs for b in BARE_BATCHES}

        def ort_run(b: int, session: Any = session, feeds: dict[int, Any] = feeds) -> None:
            session.run(["logits"], feeds[b])

        contenders[f"onnx-cuda {variant}"] = best_of(ort_run)
        del session
    try:
        import torch

        model = torch_cross_encoder(source)
        pair_texts = [(query, t) for t in texts]
        pair_texts = (pair_texts * (max(BARE_BATCHES) // len(pair_texts) + 1))[: max(BARE_BATCHES)]
        features = {
            b: model.tokenizer(
                [q for q, _ in pair_texts[:b]], [t for _, t in pair_texts[:b]], truncation=True,
                max_length=BARE_TOKENS, padding=True, return_tensors="pt",
            ).to("cuda")
            for b in BARE_BATCHES
        }  # fmt: skip

        def torch_run(b: int) -> None:
            with torch.inference_mode():
                model.model(**features[b]).logits.float().cpu()

        contenders["torch fp16 CrossEncoder"] = best_of(torch_run)
    except Exception as exc:
        contenders["torch fp16 CrossEncoder"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    base = contenders.get("torch fp16 CrossEncoder", {}).get("pairs_per_s")
    for row in contenders.values():
        if base and row.get("pairs_per_s"):
            row["vs_torch_fp16"] = row["pairs_per_s"] / base
    results["bare_512"] = {
        "tokens": BARE_TOKENS,
        "batches_tried": list(BARE_BATCHES),
        "contenders": contenders,
    }


def section_padding(bare: Bare, requests: Sequence[tuple[str, list[str]]], results: dict[str, Any]) -> None:
    path = bare.spec.variant_path("fp16") or bare.spec.variant_path("fp32")
    assert path is not None
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


# --- the run ---------------------------------------------------------------------------------------


def run_section(name: str, results: dict[str, Any], fn: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    log(f"{name} ...")
    try:
        return fn()
    except Exception as exc:
        results.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
        log(f"{name} FAILED:\n{traceback.format_exc()}")
        return None
    finally:
        results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - started, 1)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_measure")
    ap.add_argument("--model-repository", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--context", default="{}")
    ap.add_argument("--requests", type=int, default=30)
    ap.add_argument("--parity-queries", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args(argv)
    started = time.perf_counter()
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        # CUDA/cuDNN from pip wheels (nvidia-*) are found only once preloaded; the gateway itself does not
        # do this (see the report), so without it its CUDA session would silently run on the CPU.
        ort.preload_dlls()
    context = json.loads(args.context)
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**nvml_info(), "cpus": os.cpu_count()},
        "model": context.get("model"),
        "install": context.get("install"),
        "preflight": context.get("preflight"),
        "notes": [],
    }
    repository = args.model_repository
    scifact = load_set(args.data, "scifact")
    requests = [
        (c.query, scifact.texts(c, 100)) for c in scifact.first(max(args.requests, args.parity_queries))
    ]
    manifest = json.loads((repository / "reranker" / "manifest.json").read_text())
    source = str(manifest["source"].get("path") or manifest["source"]["id"])

    async def provider() -> Any:
        return await section_provider(repository, results)

    fp16_reranker = run_section("provider", results, lambda: asyncio.run(provider()))
    if fp16_reranker is not None:
        asyncio.run(fp16_reranker.close())  # rebuilt inside the speed loop's event loop below
    bare = Bare(repository)
    run_section("parity", results, lambda: section_parity(bare, requests[: args.parity_queries], results))
    run_section("oom", results, lambda: section_oom(repository, requests, results))
    run_section("bare_512", results, lambda: section_bare_512(bare, source, requests, results))
    run_section("padding", results, lambda: section_padding(bare, requests[:10], results))

    triton_notes: dict[str, Any] = {"notes": []}
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
    results["triton"] = triton_notes

    async def speed() -> None:
        from gateway.backends.onnx_local import make_session
        from gateway.domain import RerankQuery
        from gateway.loading import ModelLoader
        from gateway.pipeline import PipelineConfig, Reranker

        closers: list[Callable[[], Awaitable[None]]] = []

        def pipeline(settings: Any, **loader_args: Any) -> Callable[[], Awaitable[Contender]]:
            async def build() -> Contender:
                reranker = Reranker(
                    PipelineConfig.from_settings(settings), ModelLoader.from_settings(settings, **loader_args)
                )
                closers.append(reranker.close)
                models = await reranker.load()
                if REQUIRE_CUDA and not settings.triton_url and models.device_report.get("cuda") != "used":
                    raise RuntimeError(f"not on the GPU: {models.device_report.get('cuda')}")

                expected = "triton" if settings.triton_url else "onnx-cuda"

                async def run(query: str, docs: list[str]) -> None:
                    outcome = await reranker.rerank(RerankQuery(query, tuple(docs)))
                    if REQUIRE_CUDA and not outcome.backend.startswith(expected):
                        # a fallback served it: these would be another backend's figures
                        raise RuntimeError(f"scored by {outcome.backend}, not {expected}")

                return run

            return build

        fp32_path = bare.spec.variant_path("fp32")

        def fp32_session(path: Path, *, device: str, threads: int) -> Any:
            return make_session(fp32_path or path, device=device, threads=threads)

        contenders: dict[str, Callable[[], Awaitable[Contender]]] = {
            "onnx-cuda fp16 (gateway pipeline)": pipeline(settings_for(repository)),
            "onnx-cuda fp32 (gateway pipeline)": pipeline(
                settings_for(repository), session_factory=fp32_session
            ),
        }
        servers_started: list[Any] = []
        if usable:
            from export.triton_local import TritonInstall, TritonServer

            folder, _ = usable[0]
            triton_repo = gpu_triton_repository(repository, REPO_ROOT / "bench" / ".work" / "gpu-triton-repo")
            install = TritonInstall(
                root=folder.parent, server_dir=folder, stub_env=Path(sys.prefix), library_dirs=()
            )
            # `gpu-trt` needs TensorRT inside the server's onnxruntime backend: a failed start is reported
            for config in ("gpu", "gpu-trt"):
                server = TritonServer(
                    install, triton_repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                    model_config_name=config, log_path=REPO_ROOT / "bench" / ".work" / f"triton-{config}.log",
                )  # fmt: skip
                try:
                    server.start()
                    servers_started.append(server)
                    server.wait_ready(240)  # the TensorRT engine is built at load
                except Exception as exc:
                    triton_notes["notes"].append(f"Triton `{config}` did not start: {exc}")
                    continue
                label = (
                    "Triton GPU + TensorRT fp16"
                    if config == "gpu-trt"
                    else "Triton GPU (CUDA, dynamic batching)"
                )
                contenders[label] = pipeline(
                    settings_for(repository, triton_url=server.grpc_url, triton_timeout_s=60)
                )
        try:
            tmodel: list[Any] = []

            async def build_torch() -> Contender:
                tmodel.append(torch_cross_encoder(source))

                async def run(query: str, docs: list[str]) -> None:
                    tmodel[0].predict([(query, d) for d in docs], batch_size=64, show_progress_bar=False)

                return run

            contenders["torch fp16 CrossEncoder"] = build_torch
            await section_speed(contenders, requests[: args.requests], args.warmup, results)
        finally:
            for close in closers:
                await close()
            for server in servers_started:
                server.stop()

    run_section("speed", results, lambda: asyncio.run(speed()))
    results["notes"].append(
        "the gateway's CUDA session is built by gateway.backends.onnx_local.make_session, which neither preloads "
        "pip-installed CUDA/cuDNN (onnxruntime.preload_dlls) nor takes provider options; this run preloads them "
        "itself and builds the memory-limited session with the same options"
    )
    results["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
