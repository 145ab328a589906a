"""Quality through the running HTTP service (the path users hit): nDCG@10 and recall@10 per configuration."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.data import BeirSet, Candidates, load_set
from bench.metrics import evaluate, ranking_to_run
from bench.models import Models, gateway_env
from bench.service import Gateway, ServiceError, drive, rerank_body, triton_served, triton_server
from bench.settings import (
    TRITON_TIMEOUT_S,
    WORK,
    Sizes,
    default_keep,
    log,
)

# Figures the service must reproduce when it serves the stand-in weights
# (../shared/models/minilm-l6-rerank-standin/SOURCE.md; PyTorch fp32, max_length 512).
STANDIN_REFERENCE = {("scifact", 100): (0.6925, 0.8497), ("nfcorpus", 50): (0.3050, 0.1451)}
# ../shared/models/minilm-l2-prefilter-standin/SOURCE.md: L2 (128 tokens) then the L6 stand-in on its best N,
# first 100 SciFact queries, PyTorch fp32.
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


class QualityTable:
    """The rows of the quality section and the raw scores later rows are compared with."""

    def __init__(self, sets: dict[str, BeirSet]) -> None:
        self.sets = sets
        self.rows: list[dict[str, Any]] = []
        self.raw_scores: dict[str, dict[str, dict[str, list[float]]]] = {}

    def add(
        self, config: str, set_name: str, n: int, run: dict[str, dict[str, float]], wall: float, **extra: Any
    ) -> None:
        if not run:
            log(f"quality {config} {set_name}: no rankings (cached-only and none stored)")
            return
        if len(run) < n:
            # Evaluated on the leading queries that were done: never compared with a first-N reference.
            extra = {**extra, "partial_of": n}
            n = len(run)
        m = evaluate(self.sets[set_name].qrels, run)
        row = {"config": config, "set": set_name, "first_n": n, "seconds": wall, **m, **extra}
        self.rows.append(row)
        log(
            f"quality {config:<22} {set_name:<8} first {n:>3}: nDCG@10 {m['ndcg@10']:.4f} R@10 {m['recall@10']:.4f}"
        )

    def local_fp32(self, set_name: str) -> dict[str, list[float]]:
        return self.raw_scores.get("fp32 single-stage", {}).get(set_name, {})


def _local_fp32_run(queries: Sequence[Candidates], scores: dict[str, list[float]], depth: int | None) -> dict:
    """The local fp32 ranking of `queries` (by its stored scores), for a like-for-like row."""
    return {
        c.query_id: ranking_to_run(
            c.doc_ids[:depth], list(np.argsort(-np.asarray(scores[c.query_id]), kind="stable"))
        )
        for c in queries
        if c.query_id in scores
    }


def _bm25_rows(table: QualityTable, sizes: Sizes) -> None:
    for name, n in sizes.quality_sets:
        queries = table.sets[name].first(n)
        run = {
            c.query_id: ranking_to_run(
                c.doc_ids if sizes.depth is None else c.doc_ids[: sizes.depth],
                range(len(c.doc_ids[: sizes.depth])),
            )
            for c in queries
        }
        table.add("bm25", name, n, run, 0.0)


def _local_rows(
    table: QualityTable, models: Models, sizes: Sizes, precision: str, *, resume: bool, cached_only: bool
) -> None:
    """One server per precision. Single stage first (keep=0 per request) fills the score cache; the two-stage
    passes then only run the prefilter and read the cross-encoder scores of their survivors from the cache.
    These seconds are not speed figures (the speed section runs with the cache off)."""
    has_prefilter = models.prefilter is not None
    env = gateway_env(models, cpu_precision=precision, cache_size=1_000_000, max_in_flight=64)
    store = RankingStore(models, precision) if resume or cached_only else None
    server: contextlib.AbstractContextManager[Gateway | None] = (
        contextlib.nullcontext(None)
        if cached_only
        else Gateway(env, WORK / "logs" / f"quality-{precision}.log")
    )
    with server as gw:
        url = gw.url if gw is not None else ""
        for name, n in sizes.quality_sets:
            queries = table.sets[name].first(n)
            run, scores, wall = _rank_set(
                url, table.sets[name], queries, sizes.depth, keep=0 if has_prefilter else None, store=store,
                cached_only=cached_only,
            )  # fmt: skip
            table.add(f"{precision} single-stage", name, n, run, wall)
            table.raw_scores.setdefault(f"{precision} single-stage", {})[name] = scores
        if not has_prefilter:
            return
        for keep in sizes.keeps if precision == "fp32" else (default_keep(),):
            for name, n in sizes.quality_sets:
                queries = table.sets[name].first(n)
                run, _, wall = _rank_set(
                    url,
                    table.sets[name],
                    queries,
                    sizes.depth,
                    keep=keep,
                    store=store,
                    cached_only=cached_only,
                )
                table.add(f"{precision} two-stage keep {keep}", name, n, run, wall, keep=keep)


def _triton_rows(
    table: QualityTable, models: Models, sizes: Sizes, *, resume: bool, cached_only: bool
) -> None:
    """The first SciFact queries through the gateway scoring on a local tritonserver, beside local fp32."""
    n = sizes.triton_quality_queries
    name = sizes.quality_sets[0][0]
    queries = table.sets[name].first(n)
    try:
        store = RankingStore(models, "triton") if resume or cached_only else None
        done = store.load(name, sizes.depth, None) if store is not None else {}
        served_file = store.folder / f"{name}-served.json" if store is not None else None
        if served_file is not None and served_file.exists() and all(c.query_id in done for c in queries):
            # Every ranking is stored: so is what the service's metrics said when they were made.
            run, scores, wall = _rank_set("", table.sets[name], queries, sizes.depth, keep=None, store=store)
            served = json.loads(served_file.read_text())
        else:
            with triton_server(models.repository, WORK / "logs" / "quality-tritonserver.log") as triton:
                env = gateway_env(
                    models, cpu_precision="fp32", prefilter_name="", cache_size=0,
                    triton_url=triton.grpc_url, triton_protocol="grpc", triton_timeout_s=TRITON_TIMEOUT_S,
                )  # fmt: skip
                with Gateway(env, WORK / "logs" / "quality-triton.log") as gw:
                    run, scores, wall = _rank_set(
                        gw.url, table.sets[name], queries, sizes.depth, keep=None, store=store
                    )
                    served = triton_served(gw.url)
            if served_file is not None:
                served_file.write_text(json.dumps(served))
        local = table.local_fp32(name)
        deltas = [
            abs(a - b)
            for q, s in scores.items()
            for a, b in zip(s, local.get(q, []), strict=False)
            if not (math.isnan(a) or math.isnan(b))
        ]
        table.add("triton fp32 single-stage", name, n, run, wall, **served,
                  max_abs_score_diff_vs_local_fp32=max(deltas) if deltas else None)  # fmt: skip
        # The same queries from the local fp32 run, for a like-for-like line in the table.
        fp32_run = _local_fp32_run([c for c in queries if c.query_id in run], local, sizes.depth)
        if fp32_run:
            table.add("fp32 single-stage (same queries as triton)", name, n, fp32_run, 0.0)
    except Exception as exc:  # the Triton path is optional on a machine that cannot run the server
        log(f"triton quality skipped: {exc}")
        table.rows.append(
            {"config": "triton fp32 single-stage", "set": name, "first_n": n, "error": str(exc)}
        )


def _same_query_rows(table: QualityTable, sizes: Sizes) -> None:
    """A row cut short (see --cached-only) is compared with fp32 on exactly its queries, never on others."""
    for row in list(table.rows):
        if not row.get("partial_of") or row["config"] == "fp32 single-stage":
            continue
        local = table.local_fp32(row["set"])
        subset = table.sets[row["set"]].first(row["first_n"])
        if all(c.query_id in local for c in subset):
            label = f"fp32 single-stage (same {row['first_n']} queries as {row['config']})"
            if not any(r["config"] == label and r["set"] == row["set"] for r in table.rows):
                table.add(label, row["set"], row["first_n"], _local_fp32_run(subset, local, sizes.depth), 0.0)


def _add_references(rows: list[dict[str, Any]], models: Models, sizes: Sizes) -> None:
    """Reference columns: the stand-ins' PyTorch figures, the cascade's, the BEIR paper's."""
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


def quality(
    models: Models,
    sizes: Sizes,
    data_root: Path,
    configs: Sequence[str],
    *,
    resume: bool = False,
    cached_only: bool = False,
) -> dict[str, Any]:
    table = QualityTable({name: load_set(data_root, name) for name, _ in sizes.quality_sets})
    _bm25_rows(table, sizes)
    for precision in ("fp32", "int8"):
        if precision in configs:
            _local_rows(table, models, sizes, precision, resume=resume, cached_only=cached_only)
    if "triton" in configs:
        _triton_rows(table, models, sizes, resume=resume, cached_only=cached_only)
    _same_query_rows(table, sizes)
    _add_references(table.rows, models, sizes)
    return {
        "rows": table.rows,
        "tolerance": TOLERANCE,
        "standin": models.is_standin(),
        "from_store": cached_only,
    }
