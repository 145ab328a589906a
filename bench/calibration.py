"""Scores that mean the same across models (issue 24): two models of different scale, each calibrated at
export on SciFact and NFCorpus pooled, then served together.

    python -m bench.calibration [--models ../shared/models] [--data-root ../shared/data] [--queries 60]
                                [--serve-queries 2] [--report-only]

1. Exports the L6 stand-in and the L2 prefilter stand-in into one repository (bench/.work/calibration/repository,
   `python -m export --prefilter none`, once) and calibrates each with the exporter's own step
   (`export.score_calibration.calibrate_scores`: int8 and fp32 logits of every BM25 top-100 candidate of a seeded
   choice of `--queries` queries per set, scored as the gateway's CPU path scores them and cached in
   bench/.work/calibration/logits, a seeded half fitted, the other half held out).
2. From the held-out half: ECE (equal-mass bins) and Brier before (plain sigmoid) and after, per model, per set,
   per precision; the largest |observed rate - mean predicted| over the reliability bins holding >= 50 pairs;
   the targets (ECE <= 0.02, every such bin within 0.1); and, at the same thresholds, the observed relevance rate
   of each model's kept documents, calibrated and with the plain sigmoid.
3. Serves both models in one gateway (`RERANKER_MODELS`, the app in process, CPU int8) and checks what it answers:
   `/v1/models` shows both calibrations; for `--serve-queries` held-out queries per set and model, the served
   `relevance_score` equals the offline calibrated probability of the cached logit, `logit` stays raw, the
   ranking follows the logits, and `calibrated: false` gives the plain sigmoid.
Writes bench/results/calibration.md, calibration.json and calibration_reliability.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.settings import REPO_ROOT
from bench.settings import WORK as BENCH_WORK

WORK = BENCH_WORK / "calibration"
RESULTS = REPO_ROOT / "bench" / "results"
MODELS = (("minilm-l6", "minilm-l6-rerank-standin"), ("minilm-l2", "minilm-l2-prefilter-standin"))
SETS = ("scifact", "nfcorpus")
DEFAULT_QUERIES = 60
THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5)
TARGET_ECE = 0.02
TARGET_BIN_GAP = 0.1
MIN_BIN_PAIRS = 50


def log(message: str) -> None:
    print(f"[bench.calibration {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- 1. export and calibrate ------------------------------------------------------------------------------
def export_models(repository: Path, models_dir: Path) -> None:
    """Each stand-in exported under its own name into one repository (skipped when already there)."""
    for name, source in MODELS:
        if (repository / name / "manifest.json").is_file():
            continue
        log(f"exporting {source} as {name}")
        command = [sys.executable, "-m", "export", "--model", str(models_dir / source), "--prefilter", "none"]
        command += ["--name", name, "--output", str(repository), "--quiet"]
        subprocess.run(command, check=True, cwd=REPO_ROOT)


def calibrate(
    repository: Path, names: list[str], folders: list[Path], queries: int | None, cache: Path
) -> dict[str, dict[str, Any]]:
    from export.score_calibration import calibrate_scores

    entries = {}
    for name in names:
        log(f"calibrating {name} on {', '.join(f.name for f in folders)} ({queries} queries each)")
        entries[name] = calibrate_scores(
            repository, name, folders, max_queries=queries, cache=cache, progress=log
        )
    return entries


# --- 2. held-out figures ------------------------------------------------------------------------------------
def held_out(
    repository: Path, name: str, folders: list[Path], queries: int | None, cache: Path
) -> dict[str, Any]:
    """The held-out pairs of `name` (the calibration's own split) with their cached int8 and fp32 logits."""
    from export.score_calibration import PRECISIONS, read_beir, score_queries, split_queries

    pooled = [q for folder in folders for q in read_beir(folder, max_queries=queries)]
    fit, held = split_queries(pooled)
    out: dict[str, Any] = {"queries": held, "fitted": fit}
    for precision in PRECISIONS:
        out[precision] = score_queries(repository, name, pooled, precision, cache=cache)
    return out


def figures(entry: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """Per precision, per set (and pooled): ECE/Brier before and after, the largest bin gap, the targets."""
    from export.score_calibration import BINS, Figures, Platt, logistic

    out: dict[str, Any] = {}
    for precision, fit in entry["variants"].items():
        platt = Platt(fit["a"], fit["b"])
        per: dict[str, Any] = {}
        for set_name in (*_sets(data["queries"]), "pooled"):
            members = [q for q in data["queries"] if set_name in ("pooled", q.data)]
            x = np.array([v for q in members for v in data[precision][f"{q.data}/{q.query_id}"]])
            y = np.array([v for q in members for v in q.labels], dtype=float)
            f = Figures.of(logistic(x), platt(x), y, BINS)
            per[set_name] = {
                **f.as_dict(),
                "queries": len(members),
                "max_bin_gap_before": _gap(f.reliability_before),
                "max_bin_gap_after": _gap(f.reliability_after),
                "meets_targets": f.ece_after <= TARGET_ECE and _gap(f.reliability_after) <= TARGET_BIN_GAP,
            }
        out[precision] = per
    return out


def _sets(queries: list[Any]) -> list[str]:
    return list(dict.fromkeys(q.data for q in queries))


def _gap(table: Any) -> float:
    gaps = [abs(b.observed - b.predicted) for b in table if b.pairs >= MIN_BIN_PAIRS]
    return max(gaps) if gaps else 0.0


def thresholds(entries: dict[str, dict[str, Any]], data: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """At each threshold, each model's kept held-out pairs (int8, pooled): count, observed relevant share, mean
    predicted; calibrated, and with the plain sigmoid for contrast."""
    from export.score_calibration import Platt, logistic

    rows = []
    for t in THRESHOLDS:
        row: dict[str, Any] = {"threshold": t}
        for name, entry in entries.items():
            fit = entry["variants"]["int8"]
            x = np.array(
                [v for q in data[name]["queries"] for v in data[name]["int8"][f"{q.data}/{q.query_id}"]]
            )
            y = np.array([v for q in data[name]["queries"] for v in q.labels], dtype=float)
            upper = next((u for u in THRESHOLDS if u > t), 1.0 + 1e-9)
            for kind, p in (("calibrated", Platt(fit["a"], fit["b"])(x)), ("sigmoid", logistic(x))):
                row[f"{name}/{kind}"] = _share(p >= t, p, y)
                row[f"{name}/{kind}/band"] = {
                    "upper": min(upper, 1.0),
                    **_share((p >= t) & (p < upper), p, y),
                }
        rows.append(row)
    return rows


def compare_isotonic(
    entries: dict[str, dict[str, Any]], data: dict[str, dict[str, Any]], fitted: dict[str, Any]
) -> dict[str, Any]:
    """The shipped two-parameter map against isotonic regression (scikit-learn, here only) fitted on the same
    half of the same int8 logits: held-out ECE, Brier, and the pairs scored >= 0.3 (where a sigmoid's shape
    shows)."""
    from sklearn.isotonic import IsotonicRegression

    from export.score_calibration import BINS, Platt, brier, ece, reliability

    out: dict[str, Any] = {}
    for name, entry in entries.items():
        xf, yf = _pairs(fitted[name], data[name]["int8"])
        xh, yh = _pairs(data[name]["queries"], data[name]["int8"])
        fit = entry["variants"]["int8"]
        isotonic = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(xf, yf)
        out[name] = {}
        for method, p in (("platt", Platt(fit["a"], fit["b"])(xh)), ("isotonic", isotonic.predict(xh))):
            top = p >= 0.3
            out[name][method] = {
                "ece": ece(reliability(p, yh, BINS)),
                "brier": brier(p, yh),
                "top": _share(top, p, yh),
            }
    return out


def _pairs(queries: list[Any], logits: dict[str, list[float]]) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([v for q in queries for v in logits[f"{q.data}/{q.query_id}"]])
    return x, np.array([v for q in queries for v in q.labels], dtype=float)


def _share(mask: np.ndarray, p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    return {
        "kept": int(mask.sum()),
        "observed": float(y[mask].mean()) if mask.any() else None,
        "predicted": float(p[mask].mean()) if mask.any() else None,
    }


# --- 3. both served together ------------------------------------------------------------------------------
def served_check(repository: Path, data: dict[str, dict[str, Any]], per_set: int) -> dict[str, Any]:
    """Both models in one gateway (in process, CPU int8): their `/v1/models` calibration, and the served scores
    of a few held-out queries against the offline calibrated probabilities of the cached logits."""
    from fastapi.testclient import TestClient

    from export.score_calibration import Platt, logistic
    from gateway.app import create_app
    from gateway.config import Settings

    names = list(data)
    settings = Settings(  # type: ignore[call-arg]
        model_repository=repository,
        models=names,
        prefilter_name="",
        device="cpu",
        cache_size=0,
        request_timeout_s=3600,
        max_in_flight=1,
    )
    out: dict[str, Any] = {"models": {}, "checks": {}}
    with TestClient(create_app(settings)) as client:
        for card in client.get("/v1/models").json()["data"]:
            out["models"][card["id"]] = card.get("score_calibration")
        info = client.get("/info").json()
        out["info"] = {n: m.get("score_calibration") for n, m in info.get("served_models", {}).items()}
        for name in names:
            manifest = json.loads((repository / name / "manifest.json").read_text())
            fit = manifest["score_calibration"]["variants"]["int8"]
            platt = Platt(fit["a"], fit["b"])
            diffs, logit_diffs, raw_diffs, order_ok = [], [], [], True
            held = data[name]["queries"]
            chosen = [q for s in _sets(held) for q in [q for q in held if q.data == s][:per_set]]
            for q in chosen:
                cached = np.array(data[name]["int8"][f"{q.data}/{q.query_id}"])
                body = {"model": name, "query": q.query, "documents": list(q.documents), "keep": 0}
                started = time.perf_counter()
                served = client.post("/rerank", json=body).json()["results"]
                raw = client.post("/rerank", json={**body, "calibrated": False}).json()["results"]
                log(f"{name}: served {q.data}/{q.query_id} twice ({time.perf_counter() - started:.0f}s)")
                logits = np.array([r["logit"] for r in served])
                idx = [r["index"] for r in served]
                logit_diffs.append(float(np.max(np.abs(logits - cached[idx]))))
                diffs.append(
                    float(np.max(np.abs(np.array([r["relevance_score"] for r in served]) - platt(logits))))
                )
                by_index = {r["index"]: r["relevance_score"] for r in raw}
                raw_diffs.append(
                    max(
                        abs(by_index[i] - float(logistic(np.array(lg))))
                        for i, lg in zip(idx, logits, strict=True)
                    )
                )
                order_ok &= bool(np.all(np.diff(logits) <= 0))
            out["checks"][name] = {
                "queries": len(chosen),
                "pairs": sum(len(q.documents) for q in chosen),
                "max_abs_diff_relevance_vs_offline_map": max(diffs),
                "max_abs_diff_logit_vs_cached": max(logit_diffs),
                "max_abs_diff_raw_option_vs_sigmoid": max(raw_diffs),
                "ranking_follows_logits": order_ok,
            }
    return out


# --- report -------------------------------------------------------------------------------------------------
def write_plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["figures"])
    sets = list(next(iter(results["figures"].values()))["int8"])  # each set, then "pooled"
    fig, axes = plt.subplots(
        len(names), len(sets), figsize=(4.3 * len(sets), 4.0 * len(names)), squeeze=False
    )
    for r, name in enumerate(names):
        for c, set_name in enumerate(sets):
            ax = axes[r][c]
            f = results["figures"][name]["int8"][set_name]
            tables = (f["reliability_before"], f["reliability_after"])
            top = max(b[k] for t in tables for b in t for k in ("predicted", "observed"))
            top = min(1.0, top * 1.1 + 0.01)
            ax.plot([0, top], [0, top], color="0.6", linestyle="--", linewidth=1)
            ax.plot([b["predicted"] for b in tables[0]], [b["observed"] for b in tables[0]], "o-",
                    label=f"sigmoid, ECE {f['ece_before']:.3f}", markersize=4)  # fmt: skip
            ax.plot([b["predicted"] for b in tables[1]], [b["observed"] for b in tables[1]], "s-",
                    label=f"calibrated, ECE {f['ece_after']:.3f}", markersize=4)  # fmt: skip
            ax.set_xlim(0, top)
            ax.set_ylim(0, top)
            ax.set_title(f"{name} int8, {set_name}: {f['pairs']} held-out pairs", fontsize=9)
            ax.set_xlabel("mean predicted per bin")
            ax.set_ylabel("observed relevant share")
            ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _f(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_report(results: dict[str, Any], out: Path) -> Path:
    lines = [
        "# Score calibration: the same scale across models",
        "",
        f"Generated by `python -m bench.calibration --queries {results['queries_per_set']}` ({results['machine']}). "
        "Two stand-ins of different scale (the 6-layer reranker and the 2-layer prefilter, served as "
        "cross-encoders at 512 tokens), each exported and calibrated by `export/score_calibration.py` on SciFact "
        "and NFCorpus pooled: every BM25 top-100 candidate of a seeded choice of "
        f"{results['queries_per_set']} test queries per set (of 300 / 323: subsampled, the scoring of 4 "
        "model x precision runs on 2 shared cores is the cost), scored with the exported int8 file (one-row "
        "batches, as the CPU serves it) and fp32; Platt scaling fitted on a seeded half of the queries, every "
        "figure below on the other half. ECE: 10 equal-mass bins. Relevant: a qrels score above 0.",
        "",
        "## Held-out ECE and Brier, before (plain sigmoid) and after",
        "",
        "| model | precision | set | held-out queries / pairs (relevant) | ECE before | ECE after | Brier before "
        "| Brier after | max bin gap after (bins >= 50 pairs) | targets met |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, per_precision in results["figures"].items():
        for precision, per_set in per_precision.items():
            for set_name, f in per_set.items():
                lines.append(
                    f"| {name} | {precision} | {set_name} | {f['queries']} / {f['pairs']} ({f['relevant']}) "
                    f"| {_f(f['ece_before'])} | **{_f(f['ece_after'])}** | {_f(f['brier_before'])} "
                    f"| {_f(f['brier_after'])} | {_f(f['max_bin_gap_after'], 3)} "
                    f"| {'yes' if f['meets_targets'] else '**no**'} |"
                )
    lines += [
        "",
        f"Targets: ECE <= {TARGET_ECE} and every reliability bin holding >= {MIN_BIN_PAIRS} pairs within "
        f"{TARGET_BIN_GAP} of its mean prediction. Fitted maps (relevance_score = sigmoid(a * logit + b)): "
        + "; ".join(
            f"{name} {p} a={v['a']:.3f} b={v['b']:.3f}"
            for name, e in results["entries"].items()
            for p, v in e["variants"].items()
        )
        + ".",
        "",
        "![reliability](calibration_reliability.png)",
        "",
        "## The same threshold on both models (int8, held-out pairs of both sets pooled)",
        "",
        "| threshold | " + " | ".join(f"{n} calibrated: kept / observed / predicted" for n in results["entries"])
        + " | " + " | ".join(f"{n} sigmoid: kept / observed" for n in results["entries"]) + " |",
        "|---:|" + "---|" * (2 * len(results["entries"])),
    ]  # fmt: skip
    for row in results["thresholds"]:
        cells = [f"{row['threshold']:.2f}"]
        for n in results["entries"]:
            c = row[f"{n}/calibrated"]
            cells.append(f"{c['kept']} / {_f(c['observed'], 3)} / {_f(c['predicted'], 3)}")
        for n in results["entries"]:
            c = row[f"{n}/sigmoid"]
            cells.append(f"{c['kept']} / {_f(c['observed'], 3)}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Kept above a threshold, a calibrated model's observed share matches its own mean prediction; two models "
        "match each other only as far as their scores above the threshold are spread alike. The like-for-like "
        "check is a band of scores: pairs scored in [t, next t) should be relevant at about the same rate "
        "whichever model scored them:",
        "",
        "| band | " + " | ".join(f"{n} calibrated: pairs / observed / predicted" for n in results["entries"])
        + " | " + " | ".join(f"{n} sigmoid: pairs / observed" for n in results["entries"]) + " |",
        "|---|" + "---|" * (2 * len(results["entries"])),
    ]  # fmt: skip
    for row in results["thresholds"]:
        first = next(iter(results["entries"]))
        cells = [f"[{row['threshold']:.2f}, {row[first + '/calibrated/band']['upper']:.2f})"]
        for n in results["entries"]:
            c = row[f"{n}/calibrated/band"]
            cells.append(f"{c['kept']} / {_f(c['observed'], 3)} / {_f(c['predicted'], 3)}")
        for n in results["entries"]:
            c = row[f"{n}/sigmoid/band"]
            cells.append(f"{c['kept']} / {_f(c['observed'], 3)}")
        lines.append("| " + " | ".join(cells) + " |")
    if "isotonic" in results:
        lines += [
            "",
            "The map's shape: the shipped two-parameter sigmoid against isotonic regression (scikit-learn, fitted here "
            "only, on the same half of the same int8 logits), held out:",
            "",
            "| model | method | ECE | Brier | pairs scored >= 0.3: count / observed / predicted |",
            "|---|---|---:|---:|---|",
        ]
        for name, methods in results["isotonic"].items():
            for method, m in methods.items():
                top = m["top"]
                lines.append(
                    f"| {name} | {method} | {m['ece']:.4f} | {m['brier']:.4f} "
                    f"| {top['kept']} / {_f(top['observed'], 3)} / {_f(top['predicted'], 3)} |"
                )
    served = results["served"]
    lines += [
        "",
        "## Served together",
        "",
        f"One gateway serving both (`RERANKER_MODELS={','.join(results['entries'])}`, CPU int8, in process); "
        "`/v1/models` "
        "lists each calibration: "
        + "; ".join(
            f"{model}: held-out ECE {_f(card['held_out']['ece'])} (sigmoid {_f(card['held_out']['ece_uncalibrated'])}), "
            f"Brier {_f(card['held_out']['brier'])}, {card['queries_fitted']} + {card['queries_held_out']} queries "
            f"of {', '.join(card['data'])}"
            for model, card in served["models"].items()
            if card
        )
        + ".",
        "",
        "| model | served held-out queries (pairs) | max \\|relevance_score - offline map\\| | max \\|logit - cached logit\\| "
        "| max \\|`calibrated: false` - sigmoid\\| | ranking follows the logits |",
        "|---|---|---:|---:|---:|---|",
    ]  # fmt: skip
    for name, c in served["checks"].items():
        lines.append(
            f"| {name} | {c['queries']} ({c['pairs']}) | {c['max_abs_diff_relevance_vs_offline_map']:.1e} "
            f"| {c['max_abs_diff_logit_vs_cached']:.1e} | {c['max_abs_diff_raw_option_vs_sigmoid']:.1e} "
            f"| {'yes' if c['ranking_follows_logits'] else 'no'} |"
        )
    lines += ["", "## Where a target is missed", ""] + (results.get("missed") or ["Nowhere."])
    out.write_text("\n".join(lines) + "\n")
    return out


def missed(results: dict[str, Any]) -> list[str]:
    notes = []
    for name, per_precision in results["figures"].items():
        for precision, per_set in per_precision.items():
            for set_name, f in per_set.items():
                if f["ece_after"] > TARGET_ECE:
                    notes.append(
                        f"- {name} {precision} {set_name}: held-out ECE {f['ece_after']:.4f} > {TARGET_ECE}."
                    )
                if f["max_bin_gap_after"] > TARGET_BIN_GAP:
                    notes.append(
                        f"- {name} {precision} {set_name}: a bin of >= {MIN_BIN_PAIRS} pairs is "
                        f"{f['max_bin_gap_after']:.3f} from its mean prediction (> {TARGET_BIN_GAP})."
                    )
    return notes


def run(
    repository: Path,
    names: list[str],
    folders: list[Path],
    *,
    queries: int | None,
    cache: Path,
    serve_queries: int,
) -> dict[str, Any]:
    """Calibrate each model, measure the held-out half, serve them together: the results (JSON-ready)."""
    started = time.perf_counter()
    entries = calibrate(repository, names, folders, queries, cache)
    data = {name: held_out(repository, name, folders, queries, cache) for name in entries}
    results: dict[str, Any] = {
        "queries_per_set": queries,
        "machine": f"{os.cpu_count()} cores, shared",
        "entries": {
            n: {k: e[k] for k in ("variants", "data", "queries", "pairs", "split", "bins")}
            for n, e in entries.items()
        },
        "figures": {name: figures(entries[name], data[name]) for name in entries},
        "thresholds": thresholds(entries, data),
        "isotonic": compare_isotonic(entries, data, {n: d["fitted"] for n, d in data.items()}),
    }
    results["served"] = served_check(repository, data, serve_queries)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["missed"] = missed(results)
    for e in results["entries"].values():  # the tables are in `figures`; keep the JSON readable
        for v in e["variants"].values():
            v["held_out"] = {k: x for k, x in v["held_out"].items() if not k.startswith("reliability")}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.calibration", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        type=Path,
        default=Path(os.environ.get("RERANKER_TEST_MODELS", REPO_ROOT.parent / "shared" / "models")),
    )
    parser.add_argument("--data-root", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument(
        "--work", type=Path, default=WORK, help="the exported repository and the cached logits live here"
    )
    parser.add_argument(
        "--queries", type=int, default=DEFAULT_QUERIES, help="a seeded choice of N queries per set"
    )
    parser.add_argument(
        "--serve-queries", type=int, default=2, help="held-out queries per set and model served"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--report-only", action="store_true", help="re-render from calibration.json")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "calibration.json"
    if args.report_only:
        results = json.loads(json_path.read_text())
    else:
        repository = args.work / "repository"
        export_models(repository, args.models)
        results = run(
            repository,
            [name for name, _ in MODELS],
            [args.data_root / s for s in SETS],
            queries=args.queries,
            cache=args.work / "logits",
            serve_queries=args.serve_queries,
        )
        json_path.write_text(json.dumps(results, indent=2) + "\n")
    write_plot(results, args.out / "calibration_reliability.png")
    log(f"wrote {write_report(results, args.out / 'calibration.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
