"""The cascade section: which survivors, how many, at what quality and speed (issue 10).

    python -m bench.cascade [--model-repository R] [--threads 1] [--speed-requests N] [--http-check N]
                            [--score-only]

1. Scores every (query, document) pair of the BM25 top-100 lists (SciFact first 100, NFCorpus first 50) ONCE
   with the int8 cross-encoder and the prefilter, each pair in a batch of its own (the shipped CPU int8 path,
   so the scores are the service's), timing every call; cached in bench/.work/cascade/ (resumable).
2. Evaluates every selection rule x keep offline from those scores: nDCG@10 (pytrec_eval), fidelity
   (recall@10 and rank agreement against single stage) and docs/s (100 documents over the summed time of the
   prefilter on all of them and the cross-encoder on the survivors).
3. Speed side by side: the same 100-document requests through sentence-transformers, the int8 pipeline with
   packed and with one-row batches (item 4's cost), and the shipped default (unranked and ranked input).
Writes bench/results/cascade.md, cascade.json and cascade.png (quality against speed, Pareto front, the
shipped default marked).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.data import BeirSet, load_set
from bench.metrics import evaluate, ranking_to_run
from bench.settings import REPO_ROOT
from bench.settings import WORK as BENCH_WORK
from gateway.cascade import RULES, Rule, rank_agreement, recall_at, select_survivors
from gateway.cascade import cascade_order as ranking_of

WORK = BENCH_WORK / "cascade"
RESULTS = REPO_ROOT / "bench" / "results"
SETS = (("scifact", 100), ("nfcorpus", 50))
KEEPS = (10, 20, 30, 40, 50, 60, 70, 80, 90)
TOLERANCE = 0.005  # nDCG@10 a cascade may lose against single stage (issue 10)


def log(message: str) -> None:
    print(f"[bench.cascade {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- 1. scoring ----------------------------------------------------------------------------------------
def _load_models(repository: Path, threads: int) -> Any:
    from gateway.config import Settings
    from gateway.loading import ModelLoader

    settings = Settings(model_repository=repository, device="cpu", threads=threads, cpu_precision="int8")  # type: ignore[call-arg]
    return ModelLoader.from_settings(settings)()


def _score_each(stage: Any, query: str, documents: Sequence[str]) -> tuple[list[float], list[float]]:
    """Logit and seconds of every pair, each scored alone (as the CPU int8 path serves it)."""
    from gateway.tokenization import build_batch

    enc = stage.tokenizer.encode_pairs(query, documents, max_length=stage.max_length, max_chunks=1)
    logits: list[float] = []
    seconds: list[float] = []
    for w in enc.windows:
        batch = build_batch([w], stage.scorer.input_names, stage.tokenizer.pad_id)
        t0 = time.perf_counter()
        out = stage.scorer.run_sync(batch)
        seconds.append(time.perf_counter() - t0)
        logits.append(float(out[0]))
    return logits, seconds


def score_sets(repository: Path, data_root: Path, threads: int) -> dict[str, list[dict[str, Any]]]:
    """Per set, per query: both models' logits and seconds for every candidate (cached, resumable)."""
    WORK.mkdir(parents=True, exist_ok=True)
    models = None
    out: dict[str, list[dict[str, Any]]] = {}
    for name, first in SETS:
        data = load_set(data_root, name)
        path = WORK / f"{name}-{first}.jsonl"
        done: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                done[rec["query_id"]] = rec
        with path.open("a") as fh:
            for n, cand in enumerate(data.first(first), start=1):
                if cand.query_id in done:
                    continue
                if models is None:
                    models = _load_models(repository, threads)
                docs = data.texts(cand)
                ce, ce_s = _score_each(models.reranker, cand.query, docs)
                pre, pre_s = _score_each(models.prefilter, cand.query, docs)
                rec = {"query_id": cand.query_id, "doc_ids": list(cand.doc_ids), "ce": ce, "ce_s": ce_s}
                rec.update(pre=pre, pre_s=pre_s)
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                done[cand.query_id] = rec
                log(f"{name}: {n}/{first} scored ({sum(ce_s) + sum(pre_s):.1f}s)")
        out[name] = [done[c.query_id] for c in data.first(first)]
    return out


# --- 2. offline evaluation -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    rule: str
    keep: int  # 0: single stage
    ndcg: dict[str, float]
    recall_vs_single: dict[str, float]
    agreement: dict[str, float]
    docs_per_s: float


def cascade_order(rec: dict[str, Any], rule: Rule, keep: int, *, ranked: bool = True) -> list[int]:
    """The pipeline's ranking for one query: survivors by cross-encoder, the cut by prefilter score."""
    n = len(rec["ce"])
    kept = list(range(n)) if keep <= 0 else select_survivors(rec["pre"], keep, rule=rule, ranked=ranked)
    return ranking_of(rec["ce"], rec["pre"], kept)


def evaluate_cells(
    scored: dict[str, list[dict[str, Any]]], qrels: dict[str, dict[str, dict[str, int]]]
) -> list[Cell]:
    cells: list[Cell] = []
    configs: list[tuple[str, int]] = [("single-stage", 0)] + [(r, k) for r in RULES for k in KEEPS]
    singles = {id(rec): cascade_order(rec, "prefilter", 0) for recs in scored.values() for rec in recs}
    for rule, keep in configs:
        ndcg: dict[str, float] = {}
        fid: dict[str, float] = {}
        agree: dict[str, float] = {}
        docs = 0
        seconds = 0.0
        for name, recs in scored.items():
            run: dict[str, dict[str, float]] = {}
            recalls: list[float] = []
            agreements: list[float] = []
            for rec in recs:
                order = cascade_order(rec, rule if rule != "single-stage" else "prefilter", keep)  # type: ignore[arg-type]
                single = singles[id(rec)]
                run[rec["query_id"]] = ranking_to_run(rec["doc_ids"], order)
                recalls.append(recall_at(order, single, 10))
                agreements.append(rank_agreement(order, single))
                n = len(rec["ce"])
                docs += n
                if keep <= 0 or keep >= n:
                    seconds += sum(rec["ce_s"])
                else:
                    kept = order[:keep]  # the survivors lead the ranking
                    seconds += sum(rec["pre_s"]) + sum(rec["ce_s"][i] for i in kept)
            ndcg[name] = evaluate(qrels[name], run)["ndcg@10"]
            fid[name] = sum(recalls) / len(recalls)
            agree[name] = sum(agreements) / len(agreements)
        cells.append(Cell(rule, keep, ndcg, fid, agree, docs / seconds))
    return cells


def meets(cell: Cell, single: Cell) -> bool:
    return all(cell.ndcg[s] >= single.ndcg[s] - TOLERANCE for s in single.ndcg)


def safe_recall(cells: list[Cell], rules: Sequence[str]) -> float:
    """The least fidelity (recall@10 vs single stage, per set) above which every measured cell of `rules` met
    the 0.005 bar on that set: the target recall the adaptive keep should hold (rounded up to 0.05)."""
    single = next(c for c in cells if c.keep == 0)
    worst = 0.0
    for c in cells:
        if c.keep and c.rule in rules:
            for name, value in c.ndcg.items():
                if value < single.ndcg[name] - TOLERANCE:
                    worst = max(worst, c.recall_vs_single[name])
    return min(1.0, math.floor(worst * 20 + 1) / 20)


def recommend(cells: list[Cell], target: float, rules: Sequence[str]) -> Cell:
    """The cheapest cell of `rules` within the bar on every set and at or above `target` fidelity on every set."""
    single = next(c for c in cells if c.keep == 0)
    ok = [
        c
        for c in cells
        if c.keep and c.rule in rules and meets(c, single) and min(c.recall_vs_single.values()) >= target
    ]
    # Speed follows keep (the per-pair times of one keep differ only by noise): the least keep, then the most
    # faithful rule at it.
    return max(ok, key=lambda c: (-c.keep, min(c.recall_vs_single.values()))) if ok else single


# --- 3. speed side by side: one-row batches' cost, the default against sentence-transformers ------------
async def _speed(
    repository: Path, data: BeirSet, requests: int, threads: int, offline: list[dict[str, Any]]
) -> dict[str, Any]:
    """The same 100-document SciFact requests through every configuration in turn, request by request.

    Also checks that the served rankings are the offline ones the table was computed from (`offline`)."""
    import torch
    from sentence_transformers import CrossEncoder

    from gateway.app import build_reranker
    from gateway.config import Settings
    from gateway.domain import RerankQuery
    from gateway.pipeline import Reranker

    def service(**overrides: Any) -> Reranker:
        base: dict[str, Any] = {
            "model_repository": repository,
            "device": "cpu",
            "threads": threads,
            "cache_size": 0,
            "cascade_sample_rate": 0.0,
        }
        return build_reranker(Settings(**{**base, **overrides}))

    torch.set_num_threads(threads)
    manifest = json.loads((repository / "reranker" / "manifest.json").read_text())
    source = manifest["source"].get("path") or manifest["source"]["id"]
    st_model = CrossEncoder(source, max_length=int(manifest.get("max_length") or 512), device="cpu")
    configs: dict[str, Reranker] = {
        "int8 packed batches": service(prefilter_name="", int8_row_batches=False),
        "int8 one-row batches (shipped)": service(prefilter_name=""),
        "shipped default, unranked input": service(),
        "shipped default, ranked_input": service(),
    }
    for rr in configs.values():
        await rr.load()
    cands = data.first(requests + 1)
    times = dict.fromkeys(["sentence-transformers", *configs], 0.0)
    diffs: list[float] = []
    stages: dict[str, list[str]] = {}
    default = shipped_default()
    recs = {r["query_id"]: r for r in offline}
    same_as_offline = 0
    for n, cand in enumerate(cands):
        docs = tuple(data.texts(cand))
        warm = n == 0
        scores: dict[str, dict[int, float]] = {}
        names = list(times)
        names = (
            names[n % len(names) :] + names[: n % len(names)]
        )  # rotate: no configuration always goes first
        for name in names:
            t0 = time.perf_counter()
            if name == "sentence-transformers":
                st_model.predict([(cand.query, d) for d in docs])
                if not warm:
                    times[name] += time.perf_counter() - t0
                continue
            ranked = True if name.endswith("ranked_input") else None
            out = await configs[name].rerank(RerankQuery(cand.query, docs, ranked_input=ranked))
            if not warm:
                times[name] += time.perf_counter() - t0
            scores[name] = {r.index: r.relevance_score for r in out.results}
            stages[name] = list(out.stages)
            if ranked and not warm:
                expected = cascade_order(recs[cand.query_id], default["cascade_rule"], default["keep"])
                same_as_offline += [r.index for r in out.results][:10] == expected[:10]
        a, b = scores["int8 packed batches"], scores["int8 one-row batches (shipped)"]
        diffs.extend(abs(a[i] - b[i]) for i in a)
    for rr in configs.values():
        await rr.close()
    docs_total = sum(len(c.doc_ids) for c in cands[1:])
    st = docs_total / times["sentence-transformers"]
    rows = [
        {
            "config": name,
            "docs_per_s": docs_total / t,
            "x_sentence_transformers": docs_total / t / st,
            "stages": stages.get(name, ["torch"]),
        }
        for name, t in times.items()
    ]
    return {
        "requests": len(cands) - 1,
        "threads": threads,
        "rows": rows,
        "max_abs_diff_packed_vs_one_row": max(diffs),
        "ranked_default_top10_as_offline": same_as_offline,
    }


# --- 4. the shipped gateway over HTTP --------------------------------------------------------------------
def _http_check(repository: Path, data: BeirSet, queries: int) -> dict[str, Any]:
    """`python -m gateway` with default settings: /v1/rerank as a client sends it, with `keep: 0`, and with
    `ranked_input: true`, on the first SciFact queries (100 BM25 candidates each); then /metrics."""
    import re

    import httpx

    from bench.service import Gateway

    env = {
        "RERANKER_MODEL_REPOSITORY": str(repository),
        "RERANKER_DEVICE": "cpu",
        "RERANKER_REQUEST_TIMEOUT_S": "900",
        "RERANKER_LOG_LEVEL": "warning",
    }
    variants: dict[str, dict[str, Any]] = {
        "defaults": {},
        "keep: 0": {"keep": 0},
        "ranked_input": {"ranked_input": True},
    }
    runs: dict[str, dict[str, dict[str, float]]] = {name: {} for name in variants}
    stages: dict[str, set[str]] = {name: set() for name in variants}
    with Gateway(env, WORK / "http-check.log") as gw, httpx.Client(timeout=900) as client:
        for cand in data.first(queries):
            docs = data.texts(cand)
            for name, extra in variants.items():
                r = client.post(f"{gw.url}/v1/rerank", json={"query": cand.query, "documents": docs, **extra})
                r.raise_for_status()
                order = [res["index"] for res in r.json()["results"]]
                runs[name][cand.query_id] = ranking_to_run(cand.doc_ids, order)
                stages[name].add(" + ".join(r.json().get("stages") or []) or "?")
        time.sleep(5)  # give a fidelity sample in flight the time to finish
        metrics_text = client.get(f"{gw.url}/metrics").text
        info = client.get(f"{gw.url}/info").json()["pipeline"]["cascade"]
    count = re.search(r"^reranker_cascade_recall_at_10_count\{model=\"[^\"]+\"\} (\S+)$", metrics_text, re.M)
    return {
        "queries": queries,
        "ndcg": {name: evaluate(data.qrels, run)["ndcg@10"] for name, run in runs.items()},
        "stages": {name: sorted(v) for name, v in stages.items()},
        "metrics_recall_samples": float(count.group(1)) if count else None,
        "fidelity": info["fidelity"],
    }


# --- report ---------------------------------------------------------------------------------------------
def shipped_default() -> dict[str, Any]:
    from gateway.config import Settings

    fields = Settings.model_fields
    return {
        name: fields[name].default
        for name in (
            "keep",
            "cascade_rule",
            "cascade_input_ranked",
            "cascade_unranked",
            "cascade_target_recall",
            "int8_row_batches",
        )
    }


def default_cell(cells: list[Cell], default: dict[str, Any]) -> Cell:
    """The cell a client sending nothing special gets (ranked input only when the server says so)."""
    if not default["cascade_input_ranked"] and default["cascade_unranked"] == "single-stage":
        return next(c for c in cells if c.keep == 0)
    rule = default["cascade_rule"] if default["cascade_input_ranked"] else "prefilter"
    return next(c for c in cells if c.rule == rule and c.keep == default["keep"])


def ranked_default_cell(cells: list[Cell], default: dict[str, Any]) -> Cell:
    """The cell a client that sends `ranked_input: true` gets."""
    return next(c for c in cells if c.rule == default["cascade_rule"] and c.keep == default["keep"])


def write_report(results: dict[str, Any], cells: list[Cell], out: Path, *, plot: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    single = next(c for c in cells if c.keep == 0)
    default = results["default"]
    d_cell = default_cell(cells, default)
    r_cell = ranked_default_cell(cells, default)
    names = [s for s, _ in SETS]
    lines = [
        "# Cascade: survivors, keep, quality and speed",
        "",
        f"Generated by `python -m bench.cascade` ({results['machine']}). Every pair of the BM25 top-100 lists "
        f"(SciFact first 100, NFCorpus first 50) scored once with the int8 cross-encoder and the prefilter, each "
        f"pair in a batch of its own (the shipped CPU int8 path); every rule x keep evaluated from those "
        f"scores. docs/s: 100 documents over the summed time of the prefilter on all of them and the "
        f"cross-encoder on the survivors ({results['threads']} intra-op thread(s), shared machine: compare "
        f"within the table). Fidelity: recall@10 of the cascade's top 10 against the single-stage top 10 "
        f"(what the gateway measures at run time), mean over the queries.",
        "",
        "| rule | keep | "
        + " | ".join(f"nDCG@10 {s} (diff)" for s in names)
        + " | "
        + " | ".join(f"recall@10 vs single {s}" for s in names)
        + " | docs/s | x single | within 0.005 |",
        "|---|---|" + "---|" * (2 * len(names) + 3),
    ]
    for c in cells:
        label = "single stage" if c.keep == 0 else c.rule
        mark = " **(default)**" if c is d_cell else (" *(ranked_input)*" if c is r_cell else "")
        q = " | ".join(f"{c.ndcg[s]:.4f} ({c.ndcg[s] - single.ndcg[s]:+.4f})" for s in names)
        f = " | ".join(f"{c.recall_vs_single[s]:.3f}" for s in names)
        ok = "yes" if meets(c, single) else "no"
        lines.append(
            f"| {label}{mark} | {c.keep or 100} | {q} | {f} | {c.docs_per_s:.1f} | "
            f"{c.docs_per_s / single.docs_per_s:.2f} | {ok} |"
        )
    lines += [
        "",
        "Rules (gateway/cascade.py): prefilter = the prefilter's top k; input = the caller's first k; union = "
        "alternately the next by input order and by prefilter score until k; rrf = reciprocal-rank fusion of "
        "the two ranks (k=60). Unranked input always uses the prefilter rule.",
        "",
        "## Shipped default",
        "",
        f"Settings: {json.dumps(default)}.",
        "",
        f"- A client that sends nothing special gets: {'single stage' if d_cell.keep == 0 else d_cell.rule}"
        f" ({d_cell.docs_per_s / single.docs_per_s:.2f}x single stage).",
        f"- A client that sends `ranked_input: true`: {r_cell.rule} keep {r_cell.keep}: "
        + ", ".join(f"{s} {r_cell.ndcg[s] - single.ndcg[s]:+.4f}" for s in names)
        + f" nDCG@10, {r_cell.docs_per_s / single.docs_per_s:.2f}x single stage.",
    ]
    ranked_rules = ("input", "union", "rrf")
    target = safe_recall(cells, ranked_rules)
    best = recommend(cells, target, ranked_rules)
    pre_ok = [c for c in cells if c.rule == "prefilter" and c.keep and meets(c, single)]
    lines += [
        f"- Ranked rules (input, union, rrf): every cell whose recall@10 against single stage was at least "
        f"{target:.2f} on a set met the 0.005 bar on that set -> target recall {target:.2f}; the cheapest cell "
        f"within the bar and at that fidelity on both sets: {best.rule} keep {best.keep} "
        f"({best.docs_per_s / single.docs_per_s:.2f}x single stage).",
        "- Prefilter rule (what unranked input can use): "
        + (
            "cells within the bar: " + ", ".join(f"keep {c.keep}" for c in pre_ok)
            if pre_ok
            else "no keep below 100 met the bar on both sets, whatever its fidelity"
        )
        + f" (safe fidelity for it: {safe_recall(cells, ('prefilter',)):.2f}).",
    ]
    results["recommended"] = {"target_recall": target, "rule": best.rule, "keep": best.keep}
    speed = results.get("speed")
    if speed:
        lines += [
            "",
            "## Speed side by side (items 4 and 5)",
            "",
            f"The same {speed['requests']} SciFact requests of 100 BM25 candidates through every configuration "
            f"in turn, in one process, {speed['threads']} thread(s), no cache (python -m bench.cascade).",
            "",
            "| configuration | stages | docs/s | x sentence-transformers |",
            "|---|---|---|---|",
        ]
        for r in speed["rows"]:
            lines.append(
                f"| {r['config']} | {' + '.join(r['stages'])} | {r['docs_per_s']:.1f} | "
                f"{r['x_sentence_transformers']:.2f} |"
            )
        by = {r["config"]: r["docs_per_s"] for r in speed["rows"]}
        lines += [
            "",
            f"One-row int8 batches ran at {by['int8 one-row batches (shipped)'] / by['int8 packed batches']:.2f}x the "
            f"docs/s of packed ones here (no padding at all; each request's order of configurations rotates); "
            f"packed batches moved relevance_score by up to "
            f"{speed['max_abs_diff_packed_vs_one_row']:.3f} against the same pair scored alone (bound: 1e-4). "
            f"The served top 10 of the default with `ranked_input` equalled the offline one (the table's scores) "
            f"on {speed['ranked_default_top10_as_offline']} of {speed['requests']} requests.",
        ]
    http = results.get("http_check")
    if http:
        nd = http["ndcg"]
        lines += [
            "",
            "## The gateway with default settings, over HTTP",
            "",
            f"`python -m gateway` with nothing but the repository set; `/v1/rerank` on SciFact's first "
            f"{http['queries']} queries (100 BM25 candidates each), as a client sends them, then with `keep: 0`, then "
            "with `ranked_input: true`.",
            "",
            "| request | nDCG@10 | diff to keep: 0 | stages |",
            "|---|---|---|---|",
        ]
        for name, value in nd.items():
            lines.append(
                f"| {name} | {value:.4f} | {value - nd['keep: 0']:+.4f} | {', '.join(http['stages'][name])} |"
            )
        fid = http["fidelity"]
        lines += [
            "",
            f"`/metrics` afterwards: `reranker_cascade_recall_at_10_count` {http['metrics_recall_samples']}; "
            f"`/info` fidelity: {json.dumps(fid)}.",
        ]
    if plot:
        lines += ["", "![quality against speed](cascade.png)"]
        _plot(cells, single, d_cell, r_cell, out / "cascade.png")
    path = out / "cascade.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "cascade.json").write_text(
        json.dumps({**results, "cells": [c.__dict__ for c in cells]}, indent=1, sort_keys=True) + "\n"
    )
    return path


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def _plot(cells: list[Cell], single: Cell, d_cell: Cell, r_cell: Cell, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SETS), figsize=(12, 4.8))
    markers = {"prefilter": "o", "input": "s", "union": "^", "rrf": "D"}
    for ax, (name, first) in zip(axes, SETS, strict=True):
        for rule in RULES:
            pts = [
                (c.docs_per_s / single.docs_per_s, c.ndcg[name]) for c in cells if c.rule == rule and c.keep
            ]
            ax.plot(*zip(*pts, strict=True), marker=markers[rule], linestyle=":", label=rule, alpha=0.8)
        pts = [(c.docs_per_s / single.docs_per_s, c.ndcg[name]) for c in cells]
        front = _pareto(pts)
        ax.plot(*zip(*front, strict=True), color="black", linewidth=1, label="Pareto front")
        ax.axhline(
            single.ndcg[name] - TOLERANCE,
            color="grey",
            linestyle="--",
            linewidth=0.8,
            label="single stage - 0.005",
        )
        ax.scatter(
            [1.0], [single.ndcg[name]], color="black", marker="*", s=140, zorder=5, label="single stage"
        )
        for cell, text in ((d_cell, "default"), (r_cell, "ranked_input default")):
            x, y = cell.docs_per_s / single.docs_per_s, cell.ndcg[name]
            ax.annotate(
                text,
                (x, y),
                xytext=(14, -22 if text == "default" else -40),
                textcoords="offset points",
                fontsize=8,
                arrowprops={"arrowstyle": "->", "lw": 0.6},
            )
            ax.scatter([x], [y], facecolors="none", edgecolors="red", s=160, zorder=6)
        ax.set_title(f"{name} first {first}")
        ax.set_xlabel("speed (x single stage, docs/s)")
        ax.set_ylabel("nDCG@10")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> str:
    cpu = "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cascade", description=__doc__.split("\n")[0])
    parser.add_argument("--model-repository", type=Path, default=REPO_ROOT / "model_repository")
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (the machine is shared)")
    parser.add_argument("--speed-requests", type=int, default=5, help="0: skip the side-by-side speed run")
    parser.add_argument(
        "--http-check", type=int, default=25, help="SciFact queries through the HTTP gateway (0: skip)"
    )
    parser.add_argument("--score-only", action="store_true", help="only fill the score cache")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    data_root = args.data
    scored = score_sets(args.model_repository, data_root, args.threads)
    if args.score_only:
        return 0
    qrels = {name: load_set(data_root, name).qrels for name, _ in SETS}
    cells = evaluate_cells(scored, qrels)
    results: dict[str, Any] = {
        "machine": machine(),
        "threads": args.threads,
        "default": shipped_default(),
        "sets": [list(s) for s in SETS],
    }
    if args.speed_requests:
        log("speed side by side")
        scifact = load_set(data_root, "scifact")
        results["speed"] = asyncio.run(
            _speed(args.model_repository, scifact, args.speed_requests, args.threads, scored["scifact"])
        )
    if args.http_check:
        log("the gateway with default settings over HTTP")
        results["http_check"] = _http_check(
            args.model_repository, load_set(data_root, "scifact"), args.http_check
        )
    path = write_report(results, cells, args.out)
    log(f"wrote {path}")
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
