"""Padded vs unpadded batches on the CPU, and where a 100-document request's time goes in the pipeline.

    python -m bench.padding --model-repository model_repository [--queries 6] [--out bench/results]

1. **Padding** (bare fp32 session, the gateway's own session options, tokenizer and batch builder): the
   same SciFact pairs (first N queries x 100 BM25 candidates, 512-token cap) scored as
   - `arrival_16`: batches of 16 in arrival order, each padded to its longest (no length sorting);
   - `sorted_16`: length-bucketed, batches of 16 rows of length-sorted pairs, padded within the bucket;
   - `budget_<T>`: sorted buckets sized to a token budget of T padded tokens (rows x longest <= T, at most
     64 rows: `gateway.tokenization.plan_batches`); T = the gateway's CPU budget and larger ones;
   - `unpadded`: each pair alone (batch of one, no padding at all).
   Strategies alternate per query (rotating the order), so load from other work hits them alike. Reported:
   pairs/s, padded tokens / real tokens, and each strategy's speed as a ratio to `unpadded`.
2. **Phase shares**: the in-process pipeline (`gateway.pipeline.Reranker` over the real `ModelLoader`, cache
   off, single stage) on 100-document requests, per CPU precision. `RerankOutcome.timings` gives tokenize,
   lane wait, inference and assembly; the rest of the wall time of `rerank()` (planning, caching,
   event-loop hops) is `other`. The non-inference share is everything but `inference`.

Writes padding.json and padding.md (`write_markdown`, a pure function of the JSON) to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.data import load_set
from bench.settings import REPO_ROOT, log

ARRIVAL_ROWS = 16
PHASES = ("tokenize", "lane_wait", "inference", "assemble", "other")
# `python -m bench --size X` runs this section at PADDING_SIZES[X]: (padding queries, documents per padding
# query, 100-document requests per precision). "quick" is about 3.5 minutes on 2 loaded cores.
PADDING_SIZES = {"full": (6, 100, 8), "quick": (2, 30, 3), "smoke": (1, 10, 1)}


def padding_plans(
    lengths: Sequence[int], *, budgets: Sequence[int], max_rows: int = 64
) -> dict[str, list[list[int]]]:
    """Each strategy's batches, as lists of pair indices (every index exactly once per strategy)."""
    from gateway.tokenization import plan_batches

    n = len(lengths)
    order = sorted(range(n), key=lengths.__getitem__, reverse=True)
    plans: dict[str, list[list[int]]] = {
        "arrival_16": [list(range(i, min(i + ARRIVAL_ROWS, n))) for i in range(0, n, ARRIVAL_ROWS)],
        "sorted_16": [order[i : i + ARRIVAL_ROWS] for i in range(0, n, ARRIVAL_ROWS)],
    }
    for budget in budgets:
        plans[f"budget_{budget}"] = plan_batches(lengths, token_budget=budget, max_rows=max_rows)
    plans["unpadded"] = [[i] for i in range(n)]
    return plans


def padded_tokens(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> int:
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def measure_padding(
    repository: Path,
    data: Path,
    queries: int,
    docs: int,
    threads: int,
    budgets: Sequence[int],
    model_name: str = "reranker",
) -> dict[str, Any]:
    from gateway.backends.onnx_local import make_session
    from gateway.repository import read_model_spec
    from gateway.tokenization import PairTokenizer, build_batch

    spec = read_model_spec(repository, model_name)
    variant = "fp32-opt" if spec.variant_path("fp32-opt") else "fp32"
    path = spec.variant_path(variant)
    assert path is not None
    session = make_session(path, device="cpu", threads=threads)
    names = tuple(i.name for i in session.get_inputs())
    tok = PairTokenizer.from_dir(spec.tokenizer_dir, max_length=spec.max_length)
    scifact = load_set(data, "scifact")
    requests = [(c.query, scifact.texts(c, docs)) for c in scifact.first(queries)]

    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}
    real = 0
    padded_by: dict[str, int] = {}
    batches_by: dict[str, int] = {}
    warm = tok.encode_pairs(requests[0][0], requests[0][1][:4]).windows
    session.run(None, build_batch(warm, names, tok.pad_id).inputs)
    for q, (query, texts) in enumerate(requests):
        windows = tok.encode_pairs(query, texts).windows
        lengths = [len(w.ids) for w in windows]
        real += sum(lengths)
        plans = padding_plans(lengths, budgets=budgets)
        names_in_order = list(plans)
        shift = q % len(names_in_order)
        for name in names_in_order[shift:] + names_in_order[:shift]:
            batches = [build_batch([windows[i] for i in rows], names, tok.pad_id) for rows in plans[name]]
            started, cpu_started = time.perf_counter(), time.process_time()
            for b in batches:
                session.run(None, b.inputs)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
            cpu_seconds[name] = cpu_seconds.get(name, 0.0) + time.process_time() - cpu_started
            padded_by[name] = padded_by.get(name, 0) + padded_tokens(lengths, plans[name])
            batches_by[name] = batches_by.get(name, 0) + len(plans[name])
        log(f"padding: query {q + 1}/{len(requests)} done")
    pairs = sum(len(t) for _, t in requests)
    strategies = {
        name: {
            "seconds": round(s, 3),
            "pairs_per_s": round(pairs / s, 1),
            "batches": batches_by[name],
            "padded_tokens_per_real_token": round(padded_by[name] / real, 3),
            "speed_vs_unpadded": round(seconds["unpadded"] / s, 2),
            # CPU seconds of this process: steadier than wall time when other work shares the cores
            "cpu_seconds": round(cpu_seconds[name], 3),
            "cpu_speed_vs_unpadded": round(cpu_seconds["unpadded"] / cpu_seconds[name], 2),
        }
        for name, s in seconds.items()
    }
    return {
        "variant": variant,
        "file": path.name,
        "queries": len(requests),
        "docs_per_query": docs,
        "pairs": pairs,
        "real_tokens": real,
        "mean_pair_tokens": round(real / pairs, 1),
        "max_length": spec.max_length,
        "strategies": strategies,
    }


async def _phase_run(settings: Any, requests: list[tuple[str, list[str]]]) -> dict[str, Any]:
    from gateway.domain import RerankQuery
    from gateway.loading import ModelLoader
    from gateway.pipeline import PipelineConfig, Reranker

    reranker = Reranker(PipelineConfig.from_settings(settings), ModelLoader.from_settings(settings))
    try:
        models = await reranker.load()
        await reranker.rerank(RerankQuery(requests[0][0], tuple(requests[0][1][:8])))  # warm-up
        totals = dict.fromkeys(PHASES, 0.0)
        walls: list[float] = []
        for query, texts in requests:
            started = time.perf_counter()
            outcome = await reranker.rerank(RerankQuery(query, tuple(texts)))
            wall = time.perf_counter() - started
            walls.append(wall)
            t = outcome.timings
            measured = {"tokenize": t.tokenize, "lane_wait": t.lane_wait, "inference": t.inference}
            measured["assemble"] = t.assemble
            measured["other"] = max(0.0, wall - sum(measured.values()))
            for phase, value in measured.items():
                totals[phase] += value
        wall_total = sum(walls)
        return {
            "variant": models.reranker.variant,
            "backend": models.reranker.scorer.name,
            "requests": len(requests),
            "docs_per_request": len(requests[0][1]),
            "wall_seconds": round(wall_total, 3),
            "p50_ms": round(1000 * statistics.median(walls), 1),
            "seconds": {p: round(v, 4) for p, v in totals.items()},
            "shares": {p: round(v / wall_total, 4) for p, v in totals.items()},
            "non_inference_share": round(1 - totals["inference"] / wall_total, 4),
        }
    finally:
        await reranker.close()


def measure_phases(
    repository: Path,
    data: Path,
    queries: int,
    docs: int,
    threads: int,
    precisions: Sequence[str],
    model_name: str = "reranker",
) -> dict[str, Any]:
    from gateway.config import Settings

    scifact = load_set(data, "scifact")
    requests = [(c.query, scifact.texts(c, docs)) for c in scifact.first(queries)]
    out: dict[str, Any] = {}
    for precision in precisions:
        settings = Settings.model_validate(
            {
                "model_repository": repository,
                "model_name": model_name,
                "prefilter_name": "",
                "keep": 0,
                "cache_size": 0,
                "device": "cpu",
                "cpu_precision": precision,
                "threads": threads,
            }
        )
        out[precision] = asyncio.run(_phase_run(settings, requests))
        log(f"phases {precision}: non-inference {100 * out[precision]['non_inference_share']:.1f}%")
    return out


def write_markdown(results: dict[str, Any]) -> str:
    """padding.md from padding.json (pure: no I/O, no clock)."""
    lines = [
        "# Padded vs unpadded batches, and the pipeline's phase shares (CPU)",
        "",
        f"Run {results.get('started', '?')} on {results.get('cpus', '?')} CPUs, {results.get('threads', '?')} "
        f"threads, load average {results.get('loadavg_start', '?')} at the start and "
        f"{results.get('loadavg_end', '?')} at the end, {results.get('seconds', '?')} s: "
        f"`{results.get('command', '?')}`. Where other work shares the cores, read the ratios, not the absolute "
        "figures.",
        "",
    ]
    pad = results.get("padding")
    if pad:
        lines += [
            f"## Padding: {pad['pairs']} SciFact pairs ({pad['queries']} queries x the first "
            f"{pad['docs_per_query']} BM25 candidates, "
            f"{pad['max_length']}-token cap, {pad['mean_pair_tokens']} tokens a pair on average), "
            f"bare `{pad['file']}` (fp32)",
            "",
            "| strategy | batches | padded / real tokens | pairs/s | speed vs unpadded | CPU-time speed vs "
            "unpadded |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, s in pad["strategies"].items():
            lines.append(
                f"| {name} | {s['batches']} | {s['padded_tokens_per_real_token']:.3f} | "
                f"{s['pairs_per_s']:.1f} | {s['speed_vs_unpadded']:.2f}x | {s['cpu_speed_vs_unpadded']:.2f}x |"
            )
        lines += [
            "",
            "`arrival_16`: 16 rows in arrival order padded to their longest; `sorted_16`: 16 rows of "
            "length-sorted pairs; `budget_T`: sorted buckets with rows x longest <= T tokens (at most 64 rows, "
            "the gateway's planner; its CPU default is the first); `unpadded`: each pair alone.",
            "",
        ]
    phases = results.get("phases")
    if phases:
        lines += [
            "## Where a 100-document request's time goes (in-process pipeline, cache off, single stage)",
            "",
            "| precision | variant | requests | p50 ms | " + " | ".join(PHASES) + " | non-inference |",
            "|---|---|---:|---:|" + "---:|" * (len(PHASES) + 1),
        ]
        for precision, p in phases.items():
            shares = " | ".join(f"{100 * p['shares'][ph]:.1f}%" for ph in PHASES)
            lines.append(
                f"| {precision} | {p['variant']} | {p['requests']} | {p['p50_ms']:.1f} | {shares} | "
                f"**{100 * p['non_inference_share']:.1f}%** |"
            )
        lines += [
            "",
            "tokenize: tokenizing and building the batches (worker thread); lane_wait: queued for the "
            "inference thread; inference: the scoring calls; assemble: sigmoid, sort, top_n; other: the rest "
            "of `rerank()`'s wall time (planning, cache look-ups, event-loop and thread hops).",
            "",
        ]
    for note in results.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.padding", description=__doc__.split("\n")[0])
    ap.add_argument("--model-repository", type=Path, default=REPO_ROOT / "model_repository")
    ap.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    ap.add_argument("--queries", type=int, default=6, help="SciFact queries for the padding section")
    ap.add_argument("--phase-queries", type=int, default=8, help="100-document requests per precision")
    ap.add_argument("--docs", type=int, default=100, help="documents per padding query")
    ap.add_argument("--budgets", default="512,4096", help="token budgets (the first: the CPU default)")
    ap.add_argument("--precisions", default="int8,fp32")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--sections", default="padding,phases")
    args = ap.parse_args(argv)
    command = "python -m bench.padding " + " ".join(sys.argv[1:] if argv is None else argv)
    run(
        args.model_repository,
        args.data,
        args.out,
        queries=args.queries,
        docs=args.docs,
        phase_queries=args.phase_queries,
        budgets=[int(b) for b in args.budgets.split(",")],
        precisions=args.precisions.split(","),
        threads=args.threads,
        sections=set(args.sections.split(",")),
        command=command,
    )
    return 0


def run(
    repository: Path,
    data: Path,
    out: Path,
    *,
    queries: int,
    docs: int,
    phase_queries: int,
    budgets: Sequence[int] = (512, 4096),
    precisions: Sequence[str] = ("int8", "fp32"),
    threads: int,
    sections: set[str] | None = None,
    command: str,
    model_name: str = "reranker",
) -> dict[str, Any]:
    """Both sections into `out`/padding.{json,md}; returns the results (bench.cli keeps them too)."""
    sections = sections or {"padding", "phases"}
    started = dt.datetime.now(dt.timezone.utc)
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": command,
        "cpus": len(os.sched_getaffinity(0)),
        "threads": threads,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    if "padding" in sections:
        results["padding"] = measure_padding(repository, data, queries, docs, threads, budgets, model_name)
    if "phases" in sections:
        results["phases"] = measure_phases(
            repository, data, phase_queries, 100, threads, precisions, model_name
        )
    results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["seconds"] = round((dt.datetime.now(dt.timezone.utc) - started).total_seconds(), 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "padding.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "padding.md").write_text(write_markdown(results))
    log(f"padding report written to {out / 'padding.md'} ({results['seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    sys.exit(main())
