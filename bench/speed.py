"""Speed: every alternative on the same weights and requests, interleaved, with ratios to sentence-transformers."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.data import load_set
from bench.flops import EncoderShape
from bench.models import Models, gateway_env, lane_settings, two_stage_settings
from bench.service import Gateway, ServiceError, rerank_body, triton_served, triton_server
from bench.settings import (
    REPO_ROOT,
    TRITON_TIMEOUT_S,
    WORK,
    Sizes,
    default_keep,
    log,
)
from export import processes
from gateway.config import DEFAULT_CPU_CONCURRENCY


def speed_requests(data_root: Path, sizes: Sizes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The first N SciFact queries, each with its BM25 candidates as one request; a different one to warm up."""
    scifact = load_set(data_root, "scifact")
    n = sizes.speed_requests
    make = lambda c: {"query": c.query, "documents": scifact.texts(c, sizes.speed_docs)}  # noqa: E731
    requests = [make(c) for c in scifact.candidates[:n]]
    warmup = [make(scifact.candidates[-1])]
    return requests, warmup


def token_counts(tokenizer_dir: Path, requests: Sequence[dict[str, Any]], max_length: int) -> list[list[int]]:
    """Unpadded pair lengths under the protocol's truncation (only_second, max_length)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    counts = []
    for r in requests:
        enc = tok(
            [r["query"]] * len(r["documents"]),
            r["documents"],
            truncation="only_second",
            max_length=max_length,
        )
        counts.append([len(ids) for ids in enc["input_ids"]])
    return counts


def _flashrank_cache(models: Models) -> Path:
    """FlashRank's cache layout (<cache>/<name>/<file>) pointing at our tokenizer and ONNX files."""
    cache = WORK / "flashrank-cache"
    for precision in ("fp32", "int8"):
        folder = cache / f"bench-{precision}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for f in models.tokenizer_dir.iterdir():
            (folder / f.name).symlink_to(f.resolve())
        onnx = models.variant_file(precision)
        (folder / onnx.name).symlink_to(onnx.resolve())
    return cache


class WorkerRunner:
    """An in-process configuration living in its own `python -m bench.worker` process, driven over pipes."""

    def __init__(self, name: str, spec: dict[str, Any], timeout_s: float = 1800.0) -> None:
        self.name, self.spec, self.timeout_s = name, spec, timeout_s
        self.process: subprocess.Popen[str] | None = None
        self.load_s: float | None = None

    def start(self) -> None:
        spec_path = WORK / "specs" / f"{self.name}.json"
        spec_path.write_text(json.dumps(self.spec))
        with open(WORK / "logs" / f"speed-{self.name}.log", "wb") as logf:
            self.process = processes.popen(
                [sys.executable, "-m", "bench.worker", str(spec_path)],
                cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=logf, text=True,
            )  # fmt: skip
        self.load_s = float(self._read()["load_s"])

    def _send(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        return self._read()

    def _read(self) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout_s)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise ServiceError(
                f"{self.name}: worker gave no answer (see bench/.work/logs/speed-{self.name}.log)"
            )
        answer: dict[str, Any] = json.loads(line)
        return answer

    def warmup(self) -> None:
        self._send({"op": "warmup"})

    def run(self, i: int) -> tuple[float, list[float]]:
        answer = self._send({"op": "run", "i": i})
        return float(answer["latency_s"]), list(answer["scores"])

    def finish(self) -> dict[str, Any]:
        answer = self._send({"op": "stop"})
        return {"rss_peak_bytes": answer["rss_peak_bytes"], "load_s": self.load_s}

    def close(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(Exception):
            if process.stdin:
                process.stdin.close()
        processes.reap(process)  # closing stdin asks the worker to stop


class HttpRunner:
    """The running HTTP service (optionally scoring through a local Triton), one request at a time."""

    def __init__(
        self, name: str, env: dict[str, str], requests: Sequence[dict[str, Any]],
        warmup: Sequence[dict[str, Any]], *, triton_repository: Path | None = None,
    ) -> None:  # fmt: skip
        self.name, self.env, self.requests, self.warmup_requests = name, env, requests, warmup
        self.triton_repository = triton_repository
        self.stack = contextlib.ExitStack()
        self.gateway: Gateway | None = None
        self.client: httpx.Client | None = None
        self.load_s: float | None = None

    def start(self) -> None:
        t0 = time.perf_counter()
        env = dict(self.env)
        triton = None
        if self.triton_repository is not None:
            triton = self.stack.enter_context(
                triton_server(self.triton_repository, WORK / "logs" / f"speed-{self.name}-tritonserver.log")
            )
            env.update({
                "RERANKER_TRITON_URL": triton.grpc_url, "RERANKER_TRITON_PROTOCOL": "grpc",
                "RERANKER_TRITON_TIMEOUT_S": str(TRITON_TIMEOUT_S),
            })  # fmt: skip
        self.gateway = self.stack.enter_context(Gateway(env, WORK / "logs" / f"speed-{self.name}.log"))
        if triton is not None and triton.process is not None:
            self.gateway.extra_pids.append(triton.process.pid)
        self.client = self.stack.enter_context(httpx.Client(base_url=self.gateway.url, timeout=900.0))
        self.load_s = time.perf_counter() - t0

    def _post(self, r: dict[str, Any]) -> list[float]:
        assert self.client is not None
        response = self.client.post("/v1/rerank", json=rerank_body(r["query"], r["documents"], None))
        if response.status_code != 200:
            raise ServiceError(f"{self.name}: HTTP {response.status_code}: {response.text[:200]}")
        scores = [float("nan")] * len(r["documents"])
        for x in response.json()["results"]:
            scores[int(x["index"])] = float(x["relevance_score"])
        return scores

    def warmup(self) -> None:
        for r in self.warmup_requests:
            self._post(r)

    def run(self, i: int) -> tuple[float, list[float]]:
        t = time.perf_counter()
        scores = self._post(self.requests[i])
        return time.perf_counter() - t, scores

    def finish(self) -> dict[str, Any]:
        assert self.gateway is not None
        out: dict[str, Any] = {"rss_peak_bytes": self.gateway.peak_rss_bytes(), "load_s": self.load_s}
        if self.triton_repository is not None:
            out.update(triton_served(self.gateway.url))
            if not out["triton_calls_ok"]:
                raise ServiceError("the gateway never scored through Triton (its fallback served)")
        return out

    def close(self) -> None:
        self.stack.close()


def _summarize(name: str, raw: dict[str, Any], docs: int, flops: float) -> dict[str, Any]:
    lat = np.asarray(raw["latencies_s"], dtype=float)
    return {
        "config": name,
        "requests": int(lat.size),
        "docs_per_request": docs,
        "docs_per_s": docs * lat.size / float(lat.sum()),
        "p50_s": float(np.percentile(lat, 50)),
        "p95_s": float(np.percentile(lat, 95)),
        "p99_s": float(np.percentile(lat, 99)),
        "mean_s": float(lat.mean()),
        # Later half over earlier half of the rounds: how much the machine drifted under this configuration.
        "drift_second_half_over_first": float(
            lat[lat.size // 2 :].mean() / lat[: max(1, lat.size // 2)].mean()
        ),
        "useful_flops_per_s": flops / float(lat.sum()),
        "rss_peak_bytes": raw.get("rss_peak_bytes"),
        "load_s": raw.get("load_s"),
        "loadavg_after": os.getloadavg()[0],
        "first_scores": raw.get("first_scores"),
    }


Runner = WorkerRunner | HttpRunner


def _work(
    models: Models, requests: Sequence[dict[str, Any]], keep: int
) -> tuple[float, float, dict[str, Any]]:
    """Useful FLOPs of the requests single-stage and (approximately) two-stage, and their token figures."""
    max_length = int(models.reranker.get("max_length") or 512)
    lengths = token_counts(models.tokenizer_dir, requests, max_length)
    shape = EncoderShape.from_config(models.tokenizer_dir / "config.json")
    full_flops = sum(shape.pair_flops(t) for req in lengths for t in req)
    two_stage_flops = full_flops
    if models.prefilter is not None:
        pf_dir = models.repository / models.prefilter["name"]
        pf_tok = pf_dir / models.prefilter.get("tokenizer_dir", "tokenizer")
        pf_shape = EncoderShape.from_config(pf_tok / "config.json")
        pf_lengths = token_counts(pf_tok, requests, 128)
        two_stage_flops = sum(pf_shape.pair_flops(t) for req in pf_lengths for t in req) + sum(
            keep * float(np.mean([shape.pair_flops(t) for t in req])) for req in lengths
        )
    tokens = {
        "mean_tokens_per_pair": float(np.mean([t for req in lengths for t in req])),
        "max_tokens_per_pair": int(max(t for req in lengths for t in req)),
        "useful_gflop_per_request": full_flops / len(requests) / 1e9,
        "two_stage_gflop_per_request_approx": two_stage_flops / len(requests) / 1e9,
    }
    return full_flops, two_stage_flops, tokens


def _runners(
    models: Models,
    configs: Sequence[str],
    requests: Sequence[dict[str, Any]],
    warmup: Sequence[dict[str, Any]],
    *,
    threads: int,
    keep: int,
) -> tuple[dict[str, Runner], set[str], dict[str, str]]:
    """One runner per configuration; the names of those that run two-stage; configurations that cannot run."""
    base: dict[str, Any] = {"threads": threads, "max_length": int(models.reranker.get("max_length") or 512)}
    req_file, warm_file = WORK / "specs" / "requests.json", WORK / "specs" / "warmup.json"
    req_file.parent.mkdir(parents=True, exist_ok=True)
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    req_file.write_text(json.dumps(requests))
    warm_file.write_text(json.dumps(warmup))
    base.update(requests_file=str(req_file), warmup_file=str(warm_file))
    fr_cache = _flashrank_cache(models) if any(c.startswith("flashrank") for c in configs) else None

    def http_env(
        precision: str, two_stage: bool, concurrency: int = DEFAULT_CPU_CONCURRENCY
    ) -> dict[str, str]:
        extra = two_stage_settings(keep if two_stage else None)
        return gateway_env(
            models, cpu_precision=precision, cache_size=0, **lane_settings(threads, concurrency), **extra
        )

    runners: dict[str, Runner] = {}
    two_stage: set[str] = set()
    failures: dict[str, str] = {}
    for name in configs:
        if name == "sentence-transformers":
            runners[name] = WorkerRunner(
                name, {**base, "kind": "sentence-transformers", "model_source": models.source()}
            )
        elif name.startswith("flashrank-"):
            precision = name.split("-", 1)[1]
            spec = {
                **base, "kind": "flashrank", "flashrank_name": f"bench-{precision}",
                "flashrank_cache": str(fr_cache), "onnx_file_name": models.variant_file(precision).name,
            }  # fmt: skip
            runners[name] = WorkerRunner(name, spec)
        elif name.startswith("pipeline-"):
            precision = name.split("-", 1)[1]
            env = gateway_env(
                models, cpu_precision=precision, prefilter_name="", cache_size=0, **lane_settings(threads)
            )
            runners[name] = WorkerRunner(name, {**base, "kind": "pipeline", "env": env})
        elif name in ("http-fp32", "http-int8"):
            runners[name] = HttpRunner(name, http_env(name.split("-", 1)[1], False), requests, warmup)
        elif name == "http-int8-one-batch":
            env = http_env("int8", False, concurrency=1)
            runners[name] = HttpRunner(name, env, requests, warmup)
        elif name == "http-int8-keep-denormals":
            env = {**http_env("int8", False), "RERANKER_FLUSH_DENORMALS": "0"}
            runners[name] = HttpRunner(name, env, requests, warmup)
        elif name in ("http-two-stage", "http-two-stage-keep-denormals"):
            if models.prefilter is None:
                failures[name] = "no prefilter in the repository"
                continue
            env = http_env("int8", True)
            if name.endswith("-keep-denormals"):
                env["RERANKER_FLUSH_DENORMALS"] = "0"
            runners[name] = HttpRunner(name, env, requests, warmup)
            two_stage.add(name)
        elif name == "http-triton":
            runners[name] = HttpRunner(
                name, http_env("fp32", False), requests, warmup, triton_repository=models.repository
            )
        else:
            failures[name] = "unknown configuration"
    return runners, two_stage, failures


def _interleave(
    runners: dict[str, Runner], rounds: int, failures: dict[str, str]
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, dict[str, Any]]]:
    """Start every runner, then run request i on each in turn; always close them.

    Returns the latencies, the first request's scores and what each runner reports at the end; a runner that
    fails is recorded in `failures` (and dropped from `runners` when it fails to start).
    """
    latencies: dict[str, list[float]] = {name: [] for name in runners}
    first_scores: dict[str, list[float]] = {}
    extras: dict[str, dict[str, Any]] = {}
    try:
        for name, runner in list(runners.items()):
            log(f"speed: starting {name}")
            try:
                runner.start()
                runner.warmup()
            except Exception as exc:
                log(f"speed {name} FAILED to start: {exc}")
                failures[name] = f"{type(exc).__name__}: {exc}"
                runner.close()
                del runners[name]
        names = list(runners)
        for i in range(rounds):
            # Round-robin, rotated each round, so drift in the machine's load hits every configuration alike.
            order = names[i % len(names) :] + names[: i % len(names)] if names else []
            for name in order:
                if name in failures:
                    continue
                try:
                    latency, scores = runners[name].run(i)
                except Exception as exc:
                    log(f"speed {name} FAILED on request {i}: {exc}")
                    failures[name] = f"{type(exc).__name__}: {exc}"
                    continue
                latencies[name].append(latency)
                if i == 0:
                    first_scores[name] = scores
            log(f"speed: round {i + 1}/{rounds} done")
        for name, runner in runners.items():
            if name in failures:
                continue
            try:
                extras[name] = runner.finish()
            except Exception as exc:
                failures[name] = f"{type(exc).__name__}: {exc}"
    finally:
        for runner in runners.values():
            runner.close()
    return latencies, first_scores, extras


def speed(
    models: Models, sizes: Sizes, data_root: Path, configs: Sequence[str], threads: int
) -> dict[str, Any]:
    requests, warmup = speed_requests(data_root, sizes)
    docs = sizes.speed_docs
    keep_default = default_keep()
    full_flops, two_stage_flops, tokens = _work(models, requests, keep_default)
    log(
        f"speed: {len(requests)} requests x {docs} docs, mean {tokens['mean_tokens_per_pair']:.0f} tokens/pair"
    )
    runners, two_stage, failures = _runners(
        models, configs, requests, warmup, threads=threads, keep=keep_default
    )
    latencies, first_scores, extras = _interleave(runners, len(requests), failures)

    rows: list[dict[str, Any]] = []
    for name in runners:
        if name in failures or not latencies[name]:
            continue
        raw = {"latencies_s": latencies[name], "first_scores": first_scores.get(name), **extras.get(name, {})}
        row = _summarize(name, raw, docs, two_stage_flops if name in two_stage else full_flops)
        rows.append(row)
        log(
            f"speed {name:<24} {row['docs_per_s']:7.1f} docs/s  p50 {row['p50_s']:.3f}s  p99 {row['p99_s']:.3f}s"
        )
    _add_ratios(rows)
    return {
        "rows": rows, "failures": failures, "tokens": tokens, "keep_two_stage": keep_default,
        "method": "interleaved round-robin, one request at a time, order rotated every round",
    }  # fmt: skip


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    ref = next((r for r in rows if r["config"] == "sentence-transformers"), None)
    for r in rows:
        if ref is None:
            continue
        r["throughput_x_st"] = r["docs_per_s"] / ref["docs_per_s"]
        for p in ("p50_s", "p95_s", "p99_s"):
            r[f"{p[:-2]}_latency_x_st"] = r[p] / ref[p]
        if r.get("first_scores") and ref.get("first_scores"):
            a = np.asarray(r["first_scores"], dtype=float)
            b = np.asarray(ref["first_scores"], dtype=float)
            if a.shape == b.shape:
                r["max_abs_score_diff_vs_st"] = float(np.nanmax(np.abs(a - b)))
                k = min(10, a.size)
                top_a = set(np.argsort(-a)[:k].tolist())
                top_b = set(np.argsort(-b)[:k].tolist())
                r["top10_overlap_vs_st"] = len(top_a & top_b) / k
