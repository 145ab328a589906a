"""bench/results/report.md and its plots, from the raw results of one run (results.json)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

# Which measured quality stands for each speed configuration (same weights file, same precision).
QUALITY_OF_SPEED = {
    "sentence-transformers": "fp32 single-stage",
    "flashrank-fp32": "fp32 single-stage",
    "flashrank-int8": "int8 single-stage",
    "pipeline-fp32": "fp32 single-stage",
    "pipeline-int8": "int8 single-stage",
    "http-fp32": "fp32 single-stage",
    "http-int8": "int8 single-stage",
    "http-int8-one-batch": "int8 single-stage",
    "http-int8-keep-denormals": "int8 single-stage",
    "http-two-stage": "int8 two-stage keep {keep}",
    "http-two-stage-keep-denormals": "int8 two-stage keep {keep}",
    "http-triton": "fp32 single-stage",
}
DESCRIPTIONS = {
    "sentence-transformers": "sentence-transformers CrossEncoder.predict, PyTorch fp32, library defaults (batch 32)",
    "flashrank-fp32": "FlashRank Ranker.rerank on our fp32 ONNX (one padded batch per request)",
    "flashrank-int8": "FlashRank Ranker.rerank on our int8 ONNX (one padded batch per request)",
    "pipeline-fp32": "our Reranker in process, fp32 ONNX, single stage",
    "pipeline-int8": "our Reranker in process, int8 ONNX, single stage",
    "http-fp32": "our HTTP service, fp32, single stage",
    "http-int8": "our HTTP service, int8, single stage",
    "http-int8-one-batch": "the same service with its CPU lane running one batch at a time "
    "(`RERANKER_CPU_CONCURRENCY=1`, the default before 2026-12-05; now 2)",
    "http-int8-keep-denormals": "the same service keeping denormal numbers on its CPU threads "
    "(`RERANKER_FLUSH_DENORMALS=0`, the behaviour before 2026-12-05; the default flushes them to zero)",
    "http-two-stage-keep-denormals": "http-two-stage keeping denormal numbers (the same)",
    "http-two-stage": "our HTTP service, int8, prefilter then the cross-encoder on its best `keep` (the shipped default); "
    "documents the prefilter cuts keep prefilter scores, so its score difference and top-10 overlap against "
    "sentence-transformers measure the cascade, not a numeric error",
    "http-triton": "our HTTP service scoring through the local Triton server (python backend, fp32 ONNX)",
}


def _f(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _mib(x: Any) -> str:
    return "-" if not x else f"{x / 2**20:,.0f}"


def _source(src: Any) -> str:
    if not isinstance(src, dict):
        return str(src)
    if src.get("id"):
        return f"{src['id']}" + (f" @ {src['revision']}" if src.get("revision") else "")
    return f"{src.get('path')} (weights sha256 {str(src.get('sha256', ''))[:12]}…)"


def _quality_lookup(results: dict[str, Any], config: str, set_name: str = "scifact") -> float | None:
    row = _quality_row(results, config, set_name)
    return float(row["ndcg@10"]) if row else None


def _quality_row(results: dict[str, Any], config: str, set_name: str) -> dict[str, Any] | None:
    for r in results.get("quality", {}).get("rows", []):
        if r["config"] == config and r["set"] == set_name and "ndcg@10" in r:
            return dict(r)
    return None


def _quality_cell(results: dict[str, Any], config: str, set_name: str) -> str:
    row = _quality_row(results, config, set_name) if config else None
    if row is None:
        return "not measured"
    cell = f"{row['ndcg@10']:.4f}"
    return cell + (f" (first {row['first_n']} only)" if row.get("partial_of") else "")


def _quality_section(results: dict[str, Any]) -> list[str]:
    q = results.get("quality")
    if not q:
        return []
    out = [
        "## Ranking quality",
        "",
        "BM25 top-100 candidates (`bm25_top100.jsonl`, first N lines) reranked through `POST /v1/rerank` of the "
        'running service; document text = `(title + " " + text).strip()`; pytrec_eval `ndcg_cut.10` and '
        "`recall.10`, mean over the judged queries. *Reference* = the figure the weights' SOURCE.md gives for the "
        "same queries (PyTorch fp32; for two-stage rows, the prefilter SOURCE.md cascade figure). The BEIR paper "
        "columns are for all test queries and for the original `ms-marco-MiniLM-L-6-v2`, a different model from "
        "the stand-in: context, not a target. Two-stage rows: the gateway always runs the prefilter's int8 file at "
        "128 tokens (its defaults); `fp32`/`int8` name the cross-encoder's file. Their reference is the prefilter "
        "SOURCE.md cascade, PyTorch fp32 throughout.",
        "",
        *(
            [
                "These rankings were received from the service by earlier `--resume` runs of the same command on "
                "the same exported files (kept per query under bench/.work/quality-cache) and evaluated here "
                "(`--cached-only`); a row that says PARTIAL covers only the leading queries that had finished.",
                "",
            ]
            if q.get("from_store")
            else []
        ),
        "| set | first N | configuration | nDCG@10 | Recall@10 | reference nDCG@10 / R@10 | Δ nDCG@10 | "
        "BEIR BM25+CE | BEIR BM25 |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in q["rows"]:
        if "error" in r:
            out.append(
                f"| {r['set']} | {r['first_n']} | {r['config']} | not run: {r['error'][:120]} | | | | | |"
            )
            continue
        ref = (
            f"{_f(r.get('reference_ndcg@10'))} / {_f(r.get('reference_recall@10'))}"
            if r.get("reference_ndcg@10") is not None
            else ""
        )
        delta = r.get("delta_ndcg@10")
        mark = ""
        if r.get("within_tolerance") is True:
            mark = " ✓"
        elif r.get("within_tolerance") is False:
            mark = " ✗"
        config = r["config"]
        if r.get("partial_of"):
            config += f" (PARTIAL: only the first {r['first_n']} of {r['partial_of']} queries finished)"
        out.append(
            f"| {r['set']} | {r['first_n']} | {config} | {_f(r['ndcg@10'])} | {_f(r['recall@10'])} | {ref} | "
            f"{'' if delta is None else f'{delta:+.4f}'}{mark} | {_f(r.get('beir_paper_bm25_ce'), 3)} | "
            f"{_f(r.get('beir_paper_bm25'), 3)} |"
        )
    triton = [r for r in q["rows"] if r["config"].startswith("triton") and "ndcg@10" in r]
    for r in triton:
        out += [
            "",
            f"Triton path: {r['first_n']} queries; largest |score difference| against the local fp32 service on "
            f"the same documents {_f(r.get('max_abs_score_diff_vs_local_fp32'), 6)}; Triton scored "
            f"{_f(r.get('triton_calls_ok'), 0)} batches and the fallback {_f(r.get('fallbacks'), 0)}.",
        ]
    out.append("")
    return out


def _speed_section(results: dict[str, Any]) -> list[str]:
    s = results.get("speed")
    if not s:
        return []
    peaks = results.get("speed_peaks") or [results.get("peak_start"), results.get("peak_end")]
    peak = max((p or {}).get("flops_per_s", 0.0) for p in peaks)
    tok = s["tokens"]
    out = [
        "## Speed, side by side (same run, same weights, same requests)",
        "",
        f"{s['rows'][0]['requests'] if s['rows'] else 0} timed requests per configuration (after one warm-up "
        f"request), each one SciFact query with its {s['rows'][0]['docs_per_request'] if s['rows'] else 0} BM25 "
        "candidates. All configurations were up at once and driven round-robin, one request at a time, the order "
        "rotated every round, so load from other work on the machine hits them alike. "
        f"Pairs average {tok['mean_tokens_per_pair']:.0f} tokens (longest "
        f"{tok['max_tokens_per_pair']}) after `only_second` truncation to 512: "
        f"{tok['useful_gflop_per_request']:.0f} GFLOP of useful work per request. Ratios are to "
        "sentence-transformers in this run: throughput xST above 1 is faster; latency xST below 1 is faster. "
        f"Machine fp32 peak (best of the start and end of the timed run; the start measured "
        f"{(peaks[0] or {}).get('flops_per_s', 0) / 1e9:,.0f} while other work shared the cores) "
        f"({int((peaks[0] or {}).get('n', 0))}² fp32 matrix product, "
        f"{results.get('threads')} threads): "
        f"{peak / 1e9:,.0f} GFLOP/s. *% of peak* = useful FLOP/s (unpadded tokens, see bench/flops.py) over that "
        "peak; int8 rows are measured against the fp32 peak too, which flatters them. RSS = peak resident set of "
        "the configuration's processes (for the service: gateway, plus tritonserver and its stubs on the Triton "
        "row).",
        "",
        "| configuration | docs/s | throughput xST | p50 s | p95 s | p99 s | p50 xST | p99 xST | RSS MiB | "
        "GFLOP/s | % of peak | max abs Δscore vs ST | top-10 overlap vs ST |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in s["rows"]:
        out.append(
            f"| {r['config']} | {r['docs_per_s']:.1f} | {_f(r.get('throughput_x_st'), 2)} | {r['p50_s']:.2f} | "
            f"{r['p95_s']:.2f} | {r['p99_s']:.2f} | {_f(r.get('p50_latency_x_st'), 2)} | "
            f"{_f(r.get('p99_latency_x_st'), 2)} | {_mib(r.get('rss_peak_bytes'))} | "
            f"{r['useful_flops_per_s'] / 1e9:.0f} | {100 * r['useful_flops_per_s'] / peak if peak else 0:.0f}% | "
            f"{_f(r.get('max_abs_score_diff_vs_st'), 5)} | {_f(r.get('top10_overlap_vs_st'), 1)} |"
        )
    for name, err in s.get("failures", {}).items():
        out.append(f"| {name} | not measured: {err[:160]} | | | | | | | | | | | |")
    out += ["", "What each row is:", ""]
    out += [f"- **{k}**: {v}" for k, v in DESCRIPTIONS.items() if any(r["config"] == k for r in s["rows"])]
    out.append("")
    return out


def _sweep_section(results: dict[str, Any]) -> list[str]:
    sw = results.get("sweep")
    if not sw:
        return []
    if "error" in sw:
        return ["## Concurrency sweep", "", f"Not measured: {sw['error']}", ""]
    out = [
        "## Concurrency sweep (HTTP service)",
        "",
        f"Configuration: {sw['config']}, settings {sw['settings']} (admission raised so every request is queued "
        "rather than refused; the default `max_in_flight` 16 would answer 429 beyond 16). Closed-loop clients, "
        "each sending its next 100-document request when the last is answered.",
        "",
        "| clients | requests | ok | errors | docs/s | requests/s | p50 s | p99 s |",
        "|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for lv in sw["levels"]:
        out.append(
            f"| {lv['clients']} | {lv['requests']} | {lv['ok']} | {lv['errors'] or ''} | {lv['docs_per_s']:.1f} | "
            f"{lv['requests_per_s']:.2f} | {_f(lv['p50_s'], 2)} | {_f(lv['p99_s'], 2)} |"
        )
    out += ["", f"Peak RSS of the service over the sweep: {_mib(sw.get('rss_peak_bytes'))} MiB.", ""]
    return out


def _findings(results: dict[str, Any]) -> list[str]:
    """The plain statements: where we are slower or worse, computed from this run's numbers."""
    lines: list[str] = []
    q = results.get("quality", {}).get("rows", [])
    by = {(r["config"], r["set"]): r for r in q if "ndcg@10" in r}
    for (config, set_name), r in sorted(by.items()):
        if r.get("within_tolerance") is not None:
            verdict = "reproduces" if r["within_tolerance"] else "does NOT reproduce"
            lines.append(
                f"- {config} {verdict} the SOURCE.md figure on {set_name} (first {r['first_n']}): nDCG@10 "
                f"{r['ndcg@10']:.4f} vs {r['reference_ndcg@10']:.4f} (Δ {r['delta_ndcg@10']:+.4f}, tolerance "
                f"{results['quality']['tolerance']})."
            )

    def fp32_like(row: dict[str, Any]) -> dict[str, Any] | None:
        """fp32 single stage on exactly the queries of `row` (a row cut short has its own fp32 twin)."""
        fp = by.get(("fp32 single-stage", row["set"]))
        if fp is not None and fp["first_n"] == row["first_n"]:
            return fp
        return by.get((f"fp32 single-stage (same {row['first_n']} queries as {row['config']})", row["set"]))

    for set_name in ("scifact", "nfcorpus"):
        fp_full = by.get(("fp32 single-stage", set_name))
        for config in ["int8 single-stage", *sorted(c for c, s in by if s == set_name and "two-stage" in c)]:
            r = by.get((config, set_name))
            fp = fp32_like(r) if r else None
            if r is None or fp is None:
                continue
            d = r["ndcg@10"] - fp["ndcg@10"]
            part = f" (first {r['first_n']} queries only)" if r.get("partial_of") else ""
            lines.append(
                f"- {config} {'loses' if d < 0 else 'changes'} {d:+.4f} nDCG@10 / "
                f"{r['recall@10'] - fp['recall@10']:+.4f} Recall@10 against fp32 single stage on {set_name}{part}."
            )
        bm = by.get(("bm25", set_name))
        if fp_full and bm and fp_full["ndcg@10"] < bm["ndcg@10"] and fp_full["first_n"] == bm["first_n"]:
            lines.append(
                f"- On {set_name} the reranker is WORSE than BM25 alone at nDCG@10 ({fp_full['ndcg@10']:.4f} vs "
                f"{bm['ndcg@10']:.4f}); Recall@10 {fp_full['recall@10']:.4f} vs {bm['recall@10']:.4f}."
            )
        if fp_full and fp_full.get("partial_of"):
            lines.append(
                f"- fp32 on {set_name} finished only {fp_full['first_n']} of {fp_full['partial_of']} queries in this "
                "run: the SOURCE.md comparison needs all of them (`--resume` continues)."
            )
    rows = {r["config"]: r for r in results.get("speed", {}).get("rows", [])}
    st = rows.get("sentence-transformers")
    if st:
        for name, r in rows.items():
            if name == "sentence-transformers":
                continue
            x = r.get("throughput_x_st")
            if x is not None and x < 1.0:
                lines.append(f"- **{name} is SLOWER than sentence-transformers**: {x:.2f}x its throughput.")
        drift = st.get("drift_second_half_over_first")
        if drift is not None:
            lines.append(
                f"- sentence-transformers' mean latency in the second half of the rounds was {drift - 1:+.0%} off "
                "the first half: the machine's own drift; the configurations were interleaved request by "
                "request, so it hits them alike, but single figures carry that much noise."
            )
        for ours, theirs in (("pipeline-fp32", "flashrank-fp32"), ("pipeline-int8", "flashrank-int8"),
                             ("http-fp32", "flashrank-fp32"), ("http-int8", "flashrank-int8")):  # fmt: skip
            a, b = rows.get(ours), rows.get(theirs)
            if a and b:
                ratio = a["docs_per_s"] / b["docs_per_s"]
                word = "faster" if ratio >= 1 else "SLOWER"
                lines.append(f"- {ours} is {word} than {theirs}: {ratio:.2f}x its throughput.")
        for http, pipe in (("http-fp32", "pipeline-fp32"), ("http-int8", "pipeline-int8")):
            a, b = rows.get(http), rows.get(pipe)
            if a and b:
                diff = a["mean_s"] - b["mean_s"]
                noise = " (within this run's noise)" if abs(diff) < 0.1 * b["mean_s"] else ""
                lines.append(
                    f"- HTTP adds {diff:+.3f} s to the mean latency of the same pipeline in process "
                    f"({http} vs {pipe}){noise}."
                )
        two, one = rows.get("http-int8"), rows.get("http-int8-one-batch")
        if two and one:
            ratio = two["docs_per_s"] / one["docs_per_s"]
            lines.append(
                f"- Two batches at once on the CPU lane (the default) give {ratio:.2f}x the throughput of one at a "
                "time (http-int8 vs http-int8-one-batch)."
            )
        for flushed in ("http-int8", "http-two-stage"):
            a, b = rows.get(flushed), rows.get(f"{flushed}-keep-denormals")
            if a and b:
                lines.append(
                    f"- Denormals flushed to zero on the CPU threads (the default) give {a['docs_per_s'] / b['docs_per_s']:.2f}x "
                    f"the throughput of keeping them ({flushed} vs {flushed}-keep-denormals)."
                )
        t, f = rows.get("http-triton"), rows.get("http-fp32")
        if t and f:
            ratio = t["docs_per_s"] / f["docs_per_s"]
            lines.append(
                f"- The Triton path runs at {ratio:.2f}x the local fp32 service's throughput on this CPU machine "
                "(Triton's python backend here; the GPU path is what Triton is for)."
            )
    failures = results.get("speed", {}).get("failures", {})
    for name, err in failures.items():
        lines.append(f"- {name} was not measured: {err[:200]}")
    return lines


def _plots(results: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    rows = results.get("speed", {}).get("rows", [])
    points = []
    for r in rows:
        qc = QUALITY_OF_SPEED.get(r["config"], "").format(keep=results.get("speed", {}).get("keep_two_stage"))
        q = _quality_lookup(results, qc) if qc else None
        if q is not None:
            points.append((r["config"], r["docs_per_s"], q))
    if points:
        fig, ax = plt.subplots(figsize=(8, 5))
        for i, (name, x, y) in enumerate(sorted(points, key=lambda p: p[1])):
            ax.scatter([x], [y], s=40)
            # Neighbours often share a quality figure: stagger the labels so they stay readable.
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 6 + 11 * (i % 3)), fontsize=8,
                        arrowprops={"arrowstyle": "-", "linewidth": 0.5})  # fmt: skip
        ys = [y for _, _, y in points]
        ax.set_ylim(min(ys) - 0.01, max(ys) + 0.03)
        ax.margins(x=0.15)
        bm = _quality_lookup(results, "bm25")
        if bm is not None:
            ax.axhline(bm, linestyle="--", linewidth=1, color="gray", label=f"BM25 alone ({bm:.3f})")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("documents / s (100-document requests, one client; log scale)")
        ax.set_ylabel("SciFact nDCG@10 (first N queries)")
        ax.set_title("Quality against speed (quality of the same weights file and precision)")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "quality_vs_speed.png", dpi=110)
        plt.close(fig)
        made.append("quality_vs_speed.png")
    sw = results.get("sweep", {})
    levels = [lv for lv in sw.get("levels", []) if lv.get("p99_s") is not None]
    if levels:
        fig, ax1 = plt.subplots(figsize=(7, 4.5))
        xs = [lv["clients"] for lv in levels]
        ax1.plot(xs, [lv["p99_s"] for lv in levels], marker="o", label="p99 latency")
        ax1.plot(xs, [lv["p50_s"] for lv in levels], marker="o", label="p50 latency")
        ax1.set_xscale("log", base=2)
        ax1.set_xticks(xs, [str(x) for x in xs])
        ax1.set_xlabel("concurrent clients")
        ax1.set_ylabel("latency (s)")
        ax2 = ax1.twinx()
        ax2.plot(xs, [lv["docs_per_s"] for lv in levels], marker="s", color="tab:green", label="throughput")
        ax2.set_ylabel("documents / s")
        h1, l1 = ax1.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax1.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
        ax1.set_title(f"Latency against concurrency: {sw.get('config', '')}")
        ax1.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "latency_vs_concurrency.png", dpi=110)
        plt.close(fig)
        made.append("latency_vs_concurrency.png")
    return made


def _headline(results: dict[str, Any]) -> list[str]:
    """One table: every speed configuration with its ratios and the quality of the file it runs."""
    rows = results.get("speed", {}).get("rows", [])
    if not rows:
        return []
    keep = results.get("speed", {}).get("keep_two_stage")
    out = [
        "## Headline",
        "",
        "| configuration | throughput x sentence-transformers | p50 latency x ST | p99 latency x ST | "
        "SciFact nDCG@10 | NFCorpus nDCG@10 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        qc = QUALITY_OF_SPEED.get(r["config"], "").format(keep=keep)
        out.append(
            f"| {r['config']} | {_f(r.get('throughput_x_st'), 2)} | {_f(r.get('p50_latency_x_st'), 2)} | "
            f"{_f(r.get('p99_latency_x_st'), 2)} | {_quality_cell(results, qc, 'scifact')} | "
            f"{_quality_cell(results, qc, 'nfcorpus')} |"
        )
    out += [
        "",
        "Quality columns: the measured quality of the same weights file at the same precision (quality table "
        "below); sentence-transformers and FlashRank fp32 run the fp32 weights, FlashRank int8 our int8 file.",
        "",
    ]
    return out


def write_report(results: dict[str, Any], out: Path, *, plots: bool = True) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    images = _plots(results, out) if plots else []
    m = results.get("machine", {})
    model = results.get("model", {})
    peak_s, peak_e = results.get("peak_start", {}), results.get("peak_end", {})
    lines = [
        "# Reranker benchmarks",
        "",
        f"Run {results.get('started')} → {results.get('finished')} ({results.get('seconds', 0) / 60:.1f} min), "
        f"size `{results.get('size')}`, commit {m.get('git_commit', '?')}. Written by `python -m bench` "
        "(`make bench`); raw figures in `results.json`.",
        "",
        f"Command: `{results.get('command', 'python -m bench')}`",
        "",
        f"Model: `{_source(model.get('source'))}`; prefilter: `{_source(model.get('prefilter'))}`"
        + (
            " (the SciFact/NFCorpus-tuned stand-in for ms-marco-MiniLM-L-6-v2, see its SOURCE.md)"
            if model.get("standin")
            else ""
        )
        + ".",
        "",
        *(
            [
                "Sections taken from an earlier run (`--keep-other-sections`): "
                + "; ".join(f"**{k}** from the {v}" for k, v in results["sections_from_earlier_run"].items())
                + ". Quality figures do not depend on the machine's load; every timed figure and ratio below "
                "comes from one run.",
                "",
            ]
            if results.get("sections_from_earlier_run")
            else []
        ),
        *_headline(results),
        "## Findings (computed from this run)",
        "",
        *_findings(results),
        "",
        *_quality_section(results),
        *_speed_section(results),
        *_sweep_section(results),
    ]
    if images:
        lines += ["## Plots", ""] + [f"![{i}]({i})" for i in images] + [""]
    lines += [
        "## Machine and versions",
        "",
        f"- CPU: {m.get('cpu')} ({m.get('cpus_usable')} usable cores; SIMD {', '.join(m.get('simd', []))})",
        f"- Memory: {(m.get('memory_bytes') or 0) / 2**30:.0f} GiB; {m.get('platform')}; Python {m.get('python')}",
        f"- fp32 peak: {peak_s.get('flops_per_s', 0) / 1e9:,.0f} GFLOP/s at the start, "
        f"{peak_e.get('flops_per_s', 0) / 1e9:,.0f} at the end",
        f"- Load average (1 min) at the start {_f((results.get('loadavg_start') or [None])[0], 2)}, at the end "
        f"{_f((results.get('loadavg_end') or [None])[0], 2)}: anything above 0 is other work on the same cores.",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(m.get("versions", {}).items())),
        f"- Sizes: `{json.dumps(results.get('sizes'))}`",
        f"- Section seconds: `{json.dumps({k: round(v) for k, v in results.get('section_seconds', {}).items()})}`",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    """Re-render the report from a results.json: `python -m bench.report bench/results`."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "bench/results")
    write_report(json.loads((out / "results.json").read_text()), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
