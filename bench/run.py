"""`python -m bench`: quality and speed of every configuration in one run, then the report.

Quality goes through the running HTTP service (the same path users hit). Speed measures every alternative on
the same weights and the same 100-document requests in one run, and reports ratios to sentence-transformers
measured minutes apart, because absolute figures on a shared 2-core machine mean little.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import platform
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.data import BeirSet, Candidates, load_set
from bench.flops import EncoderShape, measure_fp32_peak
from bench.metrics import evaluate, ranking_to_run
from bench.service import Gateway, ServiceError, drive, rerank_body, triton_server
from export import processes

REPO_ROOT = Path(__file__).resolve().parent.parent
WORK = REPO_ROOT / "bench" / ".work"

# Figures the service must reproduce when it serves the stand-in weights
# (../shared/models/minilm-l6-rerank-standin/SOURCE.md; PyTorch fp32, max_length 512).
STANDIN_SHA256 = "4986aff22cb00c6e1be9733369ebb1f06b6981601200b6ef955a42f7412ab1f4"
STANDIN_REFERENCE = {("scifact", 100): (0.6925, 0.8497), ("nfcorpus", 50): (0.3050, 0.1451)}
# ../shared/models/minilm-l2-prefilter-standin/SOURCE.md: L2 (128 tokens) then the L6 stand-in on its best N,
# first 100 SciFact queries, PyTorch fp32.
PREFILTER_SHA256 = "4500930322544829c9afe6f91cdf9603e97c8fdfd7139b7e98b9924524c56bfc"
CASCADE_REFERENCE = {
    10: (0.4534, 0.4817),
    20: (0.5884, 0.6367),
    30: (0.6346, 0.7137),
    50: (0.6553, 0.7837),
    60: (0.6620, 0.8090),
}
# BEIR paper (Thakur et al. 2021), Table 2, nDCG@10 on the full test sets: BM25+CE is BM25 top-100 reranked by
# cross-encoder/ms-marco-MiniLM-L-6-v2 (a different model from the stand-in).
BEIR_PAPER = {"scifact": {"bm25": 0.665, "bm25+ce": 0.688}, "nfcorpus": {"bm25": 0.325, "bm25+ce": 0.350}}
TOLERANCE = 0.005
# The gateway's default Triton timeout (10 s) is sized for a GPU; a 32-row batch of 512-token pairs on two
# shared CPU cores takes longer, and the fallback would then quietly serve every batch locally.
TRITON_TIMEOUT_S = 600


def default_keep() -> int:
    """The shipped default number of prefilter survivors (gateway/config.py), so "two-stage" means the default."""
    from gateway.config import Settings

    return int(Settings.model_fields["keep"].default)


@dataclass(frozen=True)
class Sizes:
    """How much of everything a run measures. `full` is what the committed report uses."""

    quality_sets: tuple[tuple[str, int], ...]  # (set, first N queries)
    depth: int | None  # candidates per query (None: all 100)
    keeps: tuple[int, ...]  # two-stage keep values for the quality table
    triton_quality_queries: int  # first N SciFact queries through the Triton path
    speed_requests: int  # timed requests per configuration
    speed_docs: int  # documents per request
    sweep: tuple[tuple[int, int], ...]  # (clients, requests) for the concurrency sweep
    peak_n: int = 4096  # side of the matrix product that measures the fp32 peak


SIZES = {
    "full": Sizes(
        quality_sets=(("scifact", 100), ("nfcorpus", 50)),
        depth=None,
        keeps=(10, 20, 30, 50),
        triton_quality_queries=10,
        speed_requests=10,
        speed_docs=100,
        sweep=((1, 8), (8, 16), (32, 64)),
    ),
    "quick": Sizes(
        quality_sets=(("scifact", 20), ("nfcorpus", 10)),
        depth=None,
        keeps=(20, 50),
        triton_quality_queries=3,
        speed_requests=4,
        speed_docs=100,
        sweep=((1, 4), (8, 8), (32, 32)),
    ),
    "smoke": Sizes(
        quality_sets=(("scifact", 2), ("nfcorpus", 1)),
        depth=8,
        keeps=(3,),
        triton_quality_queries=1,
        speed_requests=2,
        speed_docs=8,
        sweep=((1, 2), (2, 2)),
        peak_n=1024,
    ),
}

SPEED_CONFIGS = (
    "sentence-transformers",
    "flashrank-fp32",
    "flashrank-int8",
    "pipeline-fp32",
    "pipeline-int8",
    "http-fp32",
    "http-int8",
    "http-two-stage",
    "http-triton",
)
QUALITY_CONFIGS = ("fp32", "int8", "triton")


def log(message: str) -> None:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%H:%M:%S")
    print(f"[bench {stamp}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# The model repository and what it was exported from
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Models:
    repository: Path
    reranker: dict[str, Any]  # manifest.json of the cross-encoder
    prefilter: dict[str, Any] | None

    @property
    def reranker_dir(self) -> Path:
        return self.repository / self.reranker["name"]

    @property
    def tokenizer_dir(self) -> Path:
        return self.reranker_dir / self.reranker.get("tokenizer_dir", "tokenizer")

    def source(self) -> str:
        """What sentence-transformers loads: the very weights the repository was exported from."""
        src = self.reranker["source"]
        return str(src.get("path") or src["id"])

    def is_standin(self) -> bool:
        return self.reranker["source"].get("sha256") == STANDIN_SHA256

    def prefilter_is_standin(self) -> bool:
        return bool(self.prefilter) and self.prefilter["source"].get("sha256") == PREFILTER_SHA256  # type: ignore[index]

    def variant_file(self, precision: str) -> Path:
        """The file the gateway runs on the CPU for `precision` (gateway/backends/factory.py's preference)."""
        variants = self.reranker["variants"]
        name = "fp32-opt" if precision == "fp32" and "fp32-opt" in variants else precision
        return self.reranker_dir / variants[name]["file"]


def _same_source(manifest: dict[str, Any], wanted: str | None) -> bool:
    if wanted is None:
        return True
    src = manifest.get("source", {})
    if src.get("id") == wanted:
        return True
    path = src.get("path")
    return bool(path) and Path(wanted).expanduser().resolve() == Path(path).resolve()


def resolve_models(repository: Path, model: str | None, prefilter: str | None) -> Models:
    """Use `repository` when it was exported from `model` (and `prefilter`), else export them under bench/.work.

    So `make bench MODEL=...` benchmarks the named model even if model_repository/ holds another one.
    """

    def load(repo: Path) -> Models | None:
        manifest = repo / "reranker" / "manifest.json"
        if not manifest.exists():
            return None
        rr = json.loads(manifest.read_text())
        pf_path = repo / "prefilter" / "manifest.json"
        pf = json.loads(pf_path.read_text()) if pf_path.exists() else None
        if not _same_source(rr, model):
            return None
        if prefilter is not None and (pf is None or not _same_source(pf, prefilter)):
            return None
        return Models(repo.resolve(), rr, pf)

    found = load(repository)
    if found is not None:
        return found
    if model is None:
        raise SystemExit(f"no model repository at {repository}; run `make export` or pass --model")
    slug = hashlib.sha256(f"{model}|{prefilter}".encode()).hexdigest()[:12]
    target = WORK / "repositories" / slug
    found = load(target)
    if found is None:
        log(f"{repository} was not exported from {model}; exporting it into {target}")
        cmd = [sys.executable, "-m", "export", "--model", model, "--output", str(target), "--quiet"]
        if prefilter:
            cmd[4:4] = ["--prefilter", prefilter]
        subprocess.run(cmd, cwd=REPO_ROOT, check=True)
        found = load(target)
    if found is None:
        raise SystemExit(f"export into {target} did not produce a repository for {model}")
    return found


# ---------------------------------------------------------------------------------------------------------
# Quality
# ---------------------------------------------------------------------------------------------------------


def _gateway_env(models: Models, **settings: Any) -> dict[str, str]:
    env = {
        "RERANKER_MODEL_REPOSITORY": str(models.repository),
        "RERANKER_MODEL_NAME": models.reranker["name"],
        "RERANKER_DEVICE": "cpu",
        "RERANKER_REQUEST_TIMEOUT_S": "900",
        "RERANKER_LOG_LEVEL": "warning",
        "RERANKER_MAX_DOCUMENTS": "1000",
    }
    if models.prefilter is None:
        env["RERANKER_PREFILTER_NAME"] = ""
    else:
        env["RERANKER_PREFILTER_NAME"] = models.prefilter["name"]
    for key, value in settings.items():
        env[f"RERANKER_{key.upper()}"] = "" if value is None else str(value)
    return env


class RankingStore:
    """Rankings already received, kept on disk per query, so an interrupted quality run resumes where it stopped.

    Keyed by the repository's variant hashes and the serving configuration: another export or precision never
    reads them.
    """

    def __init__(self, models: Models, label: str) -> None:
        fingerprint = hashlib.sha256(
            json.dumps(
                [models.reranker.get("variants"), (models.prefilter or {}).get("variants"), label],
                sort_keys=True,
            ).encode()
        ).hexdigest()[:16]
        self.folder = WORK / "quality-cache" / f"{label}-{fingerprint}"

    def _path(self, set_name: str, depth: int | None, keep: int | None) -> Path:
        return self.folder / f"{set_name}-depth{depth}-keep{keep}.jsonl"

    def load(self, set_name: str, depth: int | None, keep: int | None) -> dict[str, dict[str, Any]]:
        path = self._path(set_name, depth, keep)
        found: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):  # a line cut by an interruption
                    rec = json.loads(line)
                    found[rec["query_id"]] = rec
        return found

    def append(self, set_name: str, depth: int | None, keep: int | None, rec: dict[str, Any]) -> None:
        path = self._path(set_name, depth, keep)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")


def _rank_set(
    url: str,
    beir: BeirSet,
    queries: Sequence[Candidates],
    depth: int | None,
    keep: int | None,
    store: RankingStore | None = None,
    cached_only: bool = False,
) -> tuple[dict[str, dict[str, float]], dict[str, list[float]], float]:
    """Rerank each query's candidates through POST /v1/rerank; the run for pytrec_eval and the raw scores.

    `cached_only`: send nothing; evaluate the longest run of leading queries the store already holds.
    """
    done = store.load(beir.name, depth, keep) if store is not None else {}
    if cached_only:
        prefix: list[Candidates] = []
        for c in queries:
            if c.query_id not in done:
                break
            prefix.append(c)
        queries = prefix
    todo = [c for c in queries if c.query_id not in done]
    t0 = time.perf_counter()
    # Chunks of 8 queries, two clients: one request's JSON and tokenization overlap the other's inference,
    # and an interruption loses at most one chunk.
    for start in range(0, len(todo), 8):
        chunk = todo[start : start + 8]
        result = drive(url, [rerank_body(c.query, beir.texts(c, depth), keep) for c in chunk], clients=2)
        if result.errors:
            raise ServiceError(f"{sum(result.errors.values())} requests failed: {result.errors}")
        for c, order, sc in zip(chunk, result.rankings, result.scores, strict=True):
            rec = {"query_id": c.query_id, "order": order, "scores": sc}
            done[c.query_id] = rec
            if store is not None:
                store.append(beir.name, depth, keep, rec)
    wall = time.perf_counter() - t0
    run: dict[str, dict[str, float]] = {}
    scores: dict[str, list[float]] = {}
    for c in queries:
        ids = c.doc_ids if depth is None else c.doc_ids[:depth]
        run[c.query_id] = ranking_to_run(ids, done[c.query_id]["order"])
        scores[c.query_id] = done[c.query_id]["scores"]
    return run, scores, wall


def _metric_value(metrics_text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus counter's samples whose labels include `labels`."""
    total = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            with contextlib.suppress(ValueError):
                total += float(value)
    return total


def triton_served(url: str) -> dict[str, float]:
    """Did Triton really score, or did the fallback to local ONNX Runtime quietly take over?"""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        "triton_calls_ok": _metric_value(text, "reranker_scorer_calls_total", outcome="ok", backend="triton"),
        "fallbacks": _metric_value(text, "reranker_fallbacks_total"),
    }


def quality(
    models: Models,
    sizes: Sizes,
    data_root: Path,
    configs: Sequence[str],
    *,
    resume: bool = False,
    cached_only: bool = False,
) -> dict[str, Any]:
    sets = {name: load_set(data_root, name) for name, _ in sizes.quality_sets}
    rows: list[dict[str, Any]] = []
    raw_scores: dict[str, dict[str, dict[str, list[float]]]] = {}

    def add(
        config: str, set_name: str, n: int, run: dict[str, dict[str, float]], wall: float, **extra: Any
    ) -> None:
        if not run:
            log(f"quality {config} {set_name}: no rankings (cached-only and none stored)")
            return
        if len(run) < n:
            # Evaluated on the leading queries that were done: never compared with a first-N reference.
            extra = {**extra, "partial_of": n}
            n = len(run)
        m = evaluate(sets[set_name].qrels, run)
        row = {"config": config, "set": set_name, "first_n": n, "seconds": wall, **m, **extra}
        rows.append(row)
        log(
            f"quality {config:<22} {set_name:<8} first {n:>3}: nDCG@10 {m['ndcg@10']:.4f} R@10 {m['recall@10']:.4f}"
        )

    for name, n in sizes.quality_sets:
        queries = sets[name].first(n)
        run = {
            c.query_id: ranking_to_run(
                c.doc_ids if sizes.depth is None else c.doc_ids[: sizes.depth],
                range(len(c.doc_ids[: sizes.depth])),
            )
            for c in queries
        }
        add("bm25", name, n, run, 0.0)

    has_prefilter = models.prefilter is not None
    for precision in ("fp32", "int8"):
        if precision not in configs:
            continue
        # One server per precision. Single stage first (keep=0 per request) fills the score cache; the two-stage
        # passes then only run the prefilter and read the cross-encoder scores of their survivors from the
        # cache. These seconds are not speed figures (the speed section runs with the cache off).
        env = _gateway_env(models, cpu_precision=precision, cache_size=1_000_000, max_in_flight=64)
        store = RankingStore(models, precision) if resume or cached_only else None
        server: contextlib.AbstractContextManager[Gateway | None] = (
            contextlib.nullcontext(None)
            if cached_only
            else Gateway(env, WORK / "logs" / f"quality-{precision}.log")
        )
        with server as gw:
            url = gw.url if gw is not None else ""
            for name, n in sizes.quality_sets:
                queries = sets[name].first(n)
                run, scores, wall = _rank_set(
                    url, sets[name], queries, sizes.depth, keep=0 if has_prefilter else None, store=store,
                    cached_only=cached_only,
                )  # fmt: skip
                add(f"{precision} single-stage", name, n, run, wall)
                raw_scores.setdefault(f"{precision} single-stage", {})[name] = scores
            if has_prefilter:
                keeps = sizes.keeps if precision == "fp32" else (default_keep(),)
                for keep in keeps:
                    for name, n in sizes.quality_sets:
                        queries = sets[name].first(n)
                        run, _, wall = _rank_set(
                            url,
                            sets[name],
                            queries,
                            sizes.depth,
                            keep=keep,
                            store=store,
                            cached_only=cached_only,
                        )
                        add(f"{precision} two-stage keep {keep}", name, n, run, wall, keep=keep)

    if "triton" in configs:
        n = sizes.triton_quality_queries
        name = sizes.quality_sets[0][0]
        queries = sets[name].first(n)
        try:
            tstore = RankingStore(models, "triton") if resume or cached_only else None
            done = tstore.load(name, sizes.depth, None) if tstore is not None else {}
            served_file = tstore.folder / f"{name}-served.json" if tstore is not None else None
            if served_file is not None and served_file.exists() and all(c.query_id in done for c in queries):
                # Every ranking is stored: so is what the service's metrics said when they were made.
                run, scores, wall = _rank_set("", sets[name], queries, sizes.depth, keep=None, store=tstore)
                served = json.loads(served_file.read_text())
            else:
                with triton_server(models.repository, WORK / "logs" / "quality-tritonserver.log") as triton:
                    env = _gateway_env(
                        models, cpu_precision="fp32", prefilter_name="", cache_size=0,
                        triton_url=triton.grpc_url, triton_protocol="grpc", triton_timeout_s=TRITON_TIMEOUT_S,
                    )  # fmt: skip
                    with Gateway(env, WORK / "logs" / "quality-triton.log") as gw:
                        run, scores, wall = _rank_set(
                            gw.url, sets[name], queries, sizes.depth, keep=None, store=tstore
                        )
                        served = triton_served(gw.url)
                if served_file is not None:
                    served_file.write_text(json.dumps(served))
            local = raw_scores.get("fp32 single-stage", {}).get(name, {})
            deltas = [
                abs(a - b)
                for q, s in scores.items()
                for a, b in zip(s, local.get(q, []), strict=False)
                if not (math.isnan(a) or math.isnan(b))
            ]
            add("triton fp32 single-stage", name, n, run, wall, **served,
                max_abs_score_diff_vs_local_fp32=max(deltas) if deltas else None)  # fmt: skip
            # The same queries from the local fp32 run, for a like-for-like line in the table.
            fp32_run = {
                q: ranking_to_run(
                    next(c for c in queries if c.query_id == q).doc_ids[: sizes.depth],
                    list(np.argsort(-np.asarray(s), kind="stable")),
                )
                for q, s in local.items()
                if q in run
            }
            if fp32_run:
                add("fp32 single-stage (same queries as triton)", name, n, fp32_run, 0.0)
        except Exception as exc:  # the Triton path is optional on a machine that cannot run the server
            log(f"triton quality skipped: {exc}")
            rows.append({"config": "triton fp32 single-stage", "set": name, "first_n": n, "error": str(exc)})

    # A row cut short (see --cached-only) is compared with fp32 on exactly its queries, never on others.
    for row in list(rows):
        if not row.get("partial_of") or row["config"] == "fp32 single-stage":
            continue
        local = raw_scores.get("fp32 single-stage", {}).get(row["set"], {})
        subset = sets[row["set"]].first(row["first_n"])
        if all(c.query_id in local for c in subset):
            fp32_run = {
                c.query_id: ranking_to_run(
                    c.doc_ids[: sizes.depth], list(np.argsort(-np.asarray(local[c.query_id]), kind="stable"))
                )
                for c in subset
            }
            label = f"fp32 single-stage (same {row['first_n']} queries as {row['config']})"
            if not any(r["config"] == label and r["set"] == row["set"] for r in rows):
                add(label, row["set"], row["first_n"], fp32_run, 0.0)

    # Reference columns.
    for row in rows:
        key = (row["set"], row["first_n"])
        single = row["config"].startswith(("fp32", "int8", "triton")) and "single-stage" in row["config"]
        if single and models.is_standin() and key in STANDIN_REFERENCE and sizes.depth is None:
            ref_n, ref_r = STANDIN_REFERENCE[key]
            row["reference_ndcg@10"], row["reference_recall@10"] = ref_n, ref_r
            if "ndcg@10" in row:
                row["delta_ndcg@10"] = row["ndcg@10"] - ref_n
                if not row["config"].startswith(
                    "int8"
                ):  # the 0.005 bar is for fp32; int8's delta is its loss
                    row["within_tolerance"] = abs(row["ndcg@10"] - ref_n) <= TOLERANCE
        keep = row.get("keep")
        if (
            keep in CASCADE_REFERENCE
            and row["set"] == "scifact"
            and row["first_n"] == 100
            and models.is_standin()
            and models.prefilter_is_standin()
        ):
            row["reference_ndcg@10"], row["reference_recall@10"] = CASCADE_REFERENCE[keep]
            row["delta_ndcg@10"] = row["ndcg@10"] - CASCADE_REFERENCE[keep][0]
        if row["set"] in BEIR_PAPER:
            row["beir_paper_bm25"] = BEIR_PAPER[row["set"]]["bm25"]
            row["beir_paper_bm25_ce"] = BEIR_PAPER[row["set"]]["bm25+ce"]
    return {
        "rows": rows,
        "tolerance": TOLERANCE,
        "standin": models.is_standin(),
        "from_store": cached_only,
    }


# ---------------------------------------------------------------------------------------------------------
# Speed
# ---------------------------------------------------------------------------------------------------------


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


def speed(
    models: Models, sizes: Sizes, data_root: Path, configs: Sequence[str], threads: int
) -> dict[str, Any]:
    requests, warmup = speed_requests(data_root, sizes)
    docs = sizes.speed_docs
    max_length = int(models.reranker.get("max_length") or 512)
    lengths = token_counts(models.tokenizer_dir, requests, max_length)
    shape = EncoderShape.from_config(models.tokenizer_dir / "config.json")
    full_flops = sum(shape.pair_flops(t) for req in lengths for t in req)
    keep_default = default_keep()
    two_stage_flops = full_flops
    if models.prefilter is not None:
        pf_dir = models.repository / models.prefilter["name"]
        pf_tok = pf_dir / models.prefilter.get("tokenizer_dir", "tokenizer")
        pf_shape = EncoderShape.from_config(pf_tok / "config.json")
        pf_lengths = token_counts(pf_tok, requests, 128)
        two_stage_flops = sum(pf_shape.pair_flops(t) for req in pf_lengths for t in req) + sum(
            keep_default * float(np.mean([shape.pair_flops(t) for t in req])) for req in lengths
        )
    tokens = {
        "mean_tokens_per_pair": float(np.mean([t for req in lengths for t in req])),
        "max_tokens_per_pair": int(max(t for req in lengths for t in req)),
        "useful_gflop_per_request": full_flops / len(requests) / 1e9,
        "two_stage_gflop_per_request_approx": two_stage_flops / len(requests) / 1e9,
    }
    log(
        f"speed: {len(requests)} requests x {docs} docs, mean {tokens['mean_tokens_per_pair']:.0f} tokens/pair"
    )

    base = {"threads": threads, "max_length": max_length}
    req_file, warm_file = WORK / "specs" / "requests.json", WORK / "specs" / "warmup.json"
    req_file.parent.mkdir(parents=True, exist_ok=True)
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    req_file.write_text(json.dumps(requests))
    warm_file.write_text(json.dumps(warmup))
    base.update(requests_file=str(req_file), warmup_file=str(warm_file))
    fr_cache = _flashrank_cache(models) if any(c.startswith("flashrank") for c in configs) else None

    def http_env(precision: str, two_stage: bool) -> dict[str, str]:
        extra: dict[str, Any] = {"keep": keep_default} if two_stage else {"prefilter_name": ""}
        return _gateway_env(models, cpu_precision=precision, cache_size=0, threads=threads, **extra)

    runners: dict[str, WorkerRunner | HttpRunner] = {}
    flops: dict[str, float] = {}
    failures: dict[str, str] = {}
    for name in configs:
        flops[name] = full_flops
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
            env = _gateway_env(
                models, cpu_precision=precision, prefilter_name="", cache_size=0, threads=threads
            )
            runners[name] = WorkerRunner(name, {**base, "kind": "pipeline", "env": env})
        elif name in ("http-fp32", "http-int8"):
            runners[name] = HttpRunner(name, http_env(name.split("-", 1)[1], False), requests, warmup)
        elif name == "http-two-stage":
            if models.prefilter is None:
                failures[name] = "no prefilter in the repository"
                continue
            runners[name] = HttpRunner(name, http_env("int8", True), requests, warmup)
            flops[name] = two_stage_flops
        elif name == "http-triton":
            runners[name] = HttpRunner(
                name, http_env("fp32", False), requests, warmup, triton_repository=models.repository
            )
        else:
            failures[name] = "unknown configuration"

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
        for i in range(len(requests)):
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
            log(f"speed: round {i + 1}/{len(requests)} done")
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

    rows: list[dict[str, Any]] = []
    for name in runners:
        if name in failures or not latencies[name]:
            continue
        raw = {"latencies_s": latencies[name], "first_scores": first_scores.get(name), **extras.get(name, {})}
        row = _summarize(name, raw, docs, flops[name])
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


def sweep(models: Models, sizes: Sizes, data_root: Path, threads: int) -> dict[str, Any]:
    """Closed-loop clients against the default serving configuration (int8, two-stage), cache off."""
    scifact = load_set(data_root, "scifact")
    need = max(n for _, n in sizes.sweep)
    pool = scifact.candidates[: min(need, len(scifact.candidates))]
    bodies = [rerank_body(c.query, scifact.texts(c, sizes.speed_docs), None) for c in pool]
    two_stage = models.prefilter is not None
    env = _gateway_env(
        models, cpu_precision="int8", cache_size=0, threads=threads, max_in_flight=256,
        **({"keep": default_keep()} if two_stage else {"prefilter_name": ""}),
    )  # fmt: skip
    levels = []
    with Gateway(env, WORK / "logs" / "sweep.log") as gw:
        drive(gw.url, bodies[-1:], clients=1)  # warm-up
        for clients, n in sizes.sweep:
            res = drive(gw.url, [bodies[i % len(bodies)] for i in range(n)], clients=clients)
            lat = np.asarray([x for x in res.latencies_s if not math.isnan(x)], dtype=float)
            ok = int(lat.size)
            levels.append({
                "clients": clients, "requests": n, "ok": ok, "errors": res.errors, "wall_s": res.wall_s,
                "requests_per_s": ok / res.wall_s, "docs_per_s": ok * sizes.speed_docs / res.wall_s,
                "p50_s": float(np.percentile(lat, 50)) if ok else None,
                "p99_s": float(np.percentile(lat, 99)) if ok else None,
            })  # fmt: skip
            log(
                f"sweep {clients:>2} clients: {levels[-1]['docs_per_s']:.1f} docs/s p99 {levels[-1]['p99_s']}"
            )
        rss = gw.peak_rss_bytes()
    return {
        "config": f"http int8 two-stage keep {default_keep()}" if two_stage else "http int8 single-stage",
        "settings": {"max_in_flight": 256, "request_timeout_s": 900, "cache_size": 0},
        "levels": levels,
        "rss_peak_bytes": rss,
    }


# ---------------------------------------------------------------------------------------------------------
# Machine and versions
# ---------------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    with contextlib.suppress(OSError):
        cpuinfo = Path("/proc/cpuinfo").read_text()
        for line in cpuinfo.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                info["simd"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
                break
    with contextlib.suppress(ImportError):
        import psutil

        info["memory_bytes"] = psutil.virtual_memory().total
    from importlib import metadata

    versions = {}
    for dist in ("torch", "onnxruntime-gpu", "onnxruntime", "transformers", "sentence-transformers", "flashrank",
                 "tokenizers", "numpy", "fastapi", "uvicorn", "tritonclient", "pytrec-eval-terrier"):  # fmt: skip
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    info["versions"] = versions
    with contextlib.suppress(Exception):
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    return info


@contextlib.contextmanager
def timed(results: dict[str, Any], key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    results.setdefault("section_seconds", {})[key] = time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default=None, help="export source the repository must come from (hub id or folder)"
    )
    parser.add_argument(
        "--prefilter", default=None, help="export source of the prefilter (default: the repository's)"
    )
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--sections", default="quality,speed,sweep", help="comma-separated subset")
    parser.add_argument("--speed-configs", default=",".join(SPEED_CONFIGS))
    parser.add_argument("--quality-configs", default=",".join(QUALITY_CONFIGS))
    parser.add_argument("--speed-requests", type=int, default=None, help="override the size's timed requests")
    parser.add_argument(
        "--quality-sets", default=None, help="override the size's quality sets, e.g. scifact:100,nfcorpus:50"
    )
    parser.add_argument(
        "--triton-queries", type=int, default=None, help="override the size's Triton quality queries"
    )
    parser.add_argument(
        "--cached-only",
        action="store_true",
        help="quality from the --resume store only (no fp32/int8 server): rows cover the leading queries done",
    )
    parser.add_argument(
        "--sweep-levels",
        default=None,
        help="override the size's sweep, e.g. 1:8,8:16,32:64 (clients:requests)",
    )
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep each quality ranking under bench/.work/quality-cache and reuse it: an interrupted run "
        "continues where it stopped (keyed by the exported files and the precision)",
    )
    parser.add_argument(
        "--keep-other-sections",
        action="store_true",
        help="take the sections this run skips from the output's existing results.json (quality figures do not "
        "depend on the machine's load, so they can be measured apart from the timed sections)",
    )
    args = parser.parse_args(argv)

    sizes = SIZES[args.size]
    if args.speed_requests is not None:
        sizes = replace(sizes, speed_requests=args.speed_requests)
    if args.quality_sets:
        chosen = tuple((name, int(n)) for name, n in (x.split(":") for x in args.quality_sets.split(",")))
        sizes = replace(sizes, quality_sets=chosen)
    if args.triton_queries is not None:
        sizes = replace(sizes, triton_quality_queries=args.triton_queries)
    if args.sweep_levels:
        levels = tuple(tuple(int(x) for x in level.split(":")) for level in args.sweep_levels.split(","))
        sizes = replace(sizes, sweep=levels)  # type: ignore[arg-type]
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    models = resolve_models(args.model_repository, args.model, args.prefilter)
    log(f"repository {models.repository} (model {models.source()}), size {args.size}")
    started = dt.datetime.now(dt.timezone.utc)
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "size": args.size,
        "sizes": asdict(sizes),
        "machine": machine(),
        "loadavg_start": os.getloadavg(),
        "threads": args.threads,
        "model": {
            "source": models.reranker.get("source"),
            "model_id": models.reranker.get("model_id"),
            "prefilter": (models.prefilter or {}).get("source"),
            "standin": models.is_standin(),
        },
    }
    results["peak_start"] = measure_fp32_peak(args.threads, n=sizes.peak_n)
    log(f"fp32 peak {results['peak_start']['flops_per_s'] / 1e9:.0f} GFLOP/s")
    if "quality" in sections:
        with timed(results, "quality"):
            results["quality"] = quality(
                models, sizes, args.data, args.quality_configs.split(","), resume=args.resume,
                cached_only=args.cached_only,
            )  # fmt: skip
    if "speed" in sections:
        with timed(results, "speed"):
            results["speed"] = speed(models, sizes, args.data, args.speed_configs.split(","), args.threads)
    if "sweep" in sections:
        with timed(results, "sweep"):
            try:
                results["sweep"] = sweep(models, sizes, args.data, args.threads)
            except Exception as exc:
                log(f"sweep FAILED: {exc}")
                results["sweep"] = {"error": f"{type(exc).__name__}: {exc}"}
    results["peak_end"] = measure_fp32_peak(args.threads, n=sizes.peak_n)
    results["loadavg_end"] = os.getloadavg()
    results["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    results["seconds"] = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()

    from bench.report import write_report

    previous_path = args.output / "results.json"
    if args.keep_other_sections and previous_path.exists():
        previous = json.loads(previous_path.read_text())
        for section in ("quality", "speed", "sweep"):
            if section not in sections and section in previous:
                results[section] = previous[section]
                if section == "speed":
                    # % of peak compares with the peak measured in the run that timed the speed section.
                    results["speed_peaks"] = [previous.get("peak_start"), previous.get("peak_end")]
                results.setdefault("sections_from_earlier_run", {})[section] = (
                    f"run started {previous.get('started')}: `{previous.get('command', '?')}`"
                )
                if section in previous.get("section_seconds", {}):
                    results.setdefault("section_seconds", {})[section] = previous["section_seconds"][section]
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(results, indent=1, default=str))
    write_report(results, args.output, plots=not args.no_plots)
    log(f"report written to {args.output / 'report.md'} ({results['seconds'] / 60:.1f} min)")
    return 0
