"""Scores that mean the same across models: a per-model map from logit to P(relevant), fitted at export.

    python -m export ... --score-calibration DIR [--score-calibration DIR ...] [--score-calibration-queries N]
    python -m export.score_calibration --repository R --name N [--max-queries N] [--seed S] DIR [DIR ...]

Each DIR is a BEIR folder: `corpus.jsonl`, `queries.jsonl`, `qrels/*.tsv` (a pair is relevant when its qrels
score is above 0, unjudged candidates are not relevant) and the candidates of each query from
`bm25_top100.jsonl` when present (else the query's judged documents plus seeded random corpus documents, up to
100). Several folders are pooled. The exported model scores every candidate the way the gateway serves it
(`export.calibrate.cpu_logits`: the gateway's pair tokenizer, windows and batches, int8 in one-row batches),
once with the int8 file the CPU serves and once with fp32: their logits differ, so each gets its own map.

A seeded half of each folder's queries fits Platt scaling, P(relevant) = sigmoid(a * logit + b) with a, b by
maximum likelihood (a > 0: the map is monotone, so the ranking never changes); the other half measures it:
expected calibration error over equal-mass bins, Brier score and the reliability table, before (the manifest's
activation, a plain sigmoid) and after. The maps and the held-out figures go into the model's manifest.json as
`score_calibration` (read by gateway/repository.py), the reliability plot beside it when matplotlib is there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from export.errors import ExportError

METHOD = "platt"
FORMULA = "relevance_score = 1 / (1 + exp(-(a * logit + b)))"
SEED = 0
BINS = 10
Precision = Literal["int8", "fp32"]
# The logits each map is fitted on: the CPU's int8 file, and fp32 (which fp16 and Triton's model.onnx share).
PRECISIONS: tuple[Precision, ...] = ("int8", "fp32")
RUN_FILE = "bm25_top100.jsonl"
FALLBACK_CANDIDATES = 100
PLOT = "calibration/reliability.png"  # beside manifest.json
CHUNK = 8  # queries scored per ONNX Runtime session (the logits cache is written after each)


@dataclass(frozen=True)
class LabelledQuery:
    """One query of a calibration folder, its candidates and whether each is relevant (qrels score > 0)."""

    data: str
    query_id: str
    query: str
    documents: tuple[str, ...]
    labels: tuple[int, ...]


@dataclass(frozen=True)
class Platt:
    """P(relevant) = sigmoid(a * logit + b)."""

    a: float
    b: float

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        return logistic(self.a * np.asarray(logits, dtype=np.float64) + self.b)


@dataclass(frozen=True)
class Bin:
    """One equal-mass bin of the reliability table."""

    pairs: int
    low: float  # the bin's least and greatest predicted probability
    high: float
    predicted: float  # mean predicted probability
    observed: float  # share of relevant pairs

    def as_dict(self) -> dict[str, Any]:
        return {
            "pairs": self.pairs,
            "low": round(self.low, 6),
            "high": round(self.high, 6),
            "predicted": round(self.predicted, 6),
            "observed": round(self.observed, 6),
        }


# --- reading the folders --------------------------------------------------------------------------------
def read_beir(folder: Path, *, max_queries: int | None = None, seed: int = SEED) -> list[LabelledQuery]:
    """The labelled queries of one BEIR folder (a seeded choice of `max_queries` of them when given).

    Documents are `(title + " " + text).strip()`, as BEIR joins them; a query without judgements is left out.
    """
    folder = Path(folder)
    try:
        docs = {
            r["_id"]: (r.get("title", "") + " " + r.get("text", "")).strip()
            for r in _jsonl(folder / "corpus.jsonl")
        }
        queries = {r["_id"]: str(r["text"]) for r in _jsonl(folder / "queries.jsonl")}
        qrels = _qrels(folder)
        run = folder / RUN_FILE
        if run.is_file():
            candidates = [(str(r["query_id"]), [str(d) for d in r["doc_ids"]]) for r in _jsonl(run)]
        else:
            candidates = _judged_plus_random(qrels, list(docs), seed)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{folder} is not a BEIR folder with candidates: {exc!r}") from exc
    out: list[LabelledQuery] = []
    for query_id, doc_ids in candidates:
        judged = qrels.get(query_id)
        if judged is None or query_id not in queries:
            continue
        known = [d for d in doc_ids if d in docs]
        if not known:
            continue
        out.append(
            LabelledQuery(
                data=folder.name,
                query_id=query_id,
                query=queries[query_id],
                documents=tuple(docs[d] for d in known),
                labels=tuple(int(judged.get(d, 0) > 0) for d in known),
            )
        )
    if not out:
        raise ExportError(f"{folder}: no judged query has candidates in the corpus")
    if max_queries is not None and max_queries < len(out):
        # A seeded permutation's first N: a smaller choice is a prefix of a larger one (cached logits reused).
        order = random.Random(f"{seed}:{folder.name}").sample(range(len(out)), len(out))
        out = [out[i] for i in sorted(order[:max_queries])]
    return out


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _qrels(folder: Path) -> dict[str, dict[str, int]]:
    """Every `qrels/*.tsv` (TSV with a header, CRLF or LF): query id -> document id -> score."""
    files = sorted((folder / "qrels").glob("*.tsv"))
    if not files:
        raise OSError(f"no qrels/*.tsv in {folder}")
    qrels: dict[str, dict[str, int]] = {}
    for path in files:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh):
                parts = line.rstrip("\r\n").split("\t")
                if len(parts) != 3 or (n == 0 and not parts[2].lstrip("-").isdigit()):
                    continue  # the header, or a blank line
                qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return qrels


def _judged_plus_random(
    qrels: dict[str, dict[str, int]], corpus: list[str], seed: int
) -> list[tuple[str, list[str]]]:
    """Without a run file: each query's judged documents plus seeded random ones, up to 100 candidates."""
    rng = random.Random(seed)
    out = []
    for query_id in sorted(qrels):
        judged = list(qrels[query_id])
        chosen = set(judged)
        extra = [d for d in rng.sample(corpus, min(len(corpus), FALLBACK_CANDIDATES)) if d not in chosen]
        out.append((query_id, judged + extra[: max(0, FALLBACK_CANDIDATES - len(judged))]))
    return out


def split_queries(
    queries: Sequence[LabelledQuery], seed: int = SEED
) -> tuple[list[LabelledQuery], list[LabelledQuery]]:
    """A seeded half of each folder's queries to fit on, the other half held out (folders stay balanced)."""
    fit: list[LabelledQuery] = []
    held: list[LabelledQuery] = []
    for data in dict.fromkeys(q.data for q in queries):
        members = [q for q in queries if q.data == data]
        order = list(range(len(members)))
        random.Random(f"{seed}:{data}:split").shuffle(order)
        half = set(order[: (len(members) + 1) // 2])
        for i, q in enumerate(members):
            (fit if i in half else held).append(q)
    return fit, held


# --- the fit and its figures ----------------------------------------------------------------------------
def logistic(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))
    return out


def fit_platt(logits: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> Platt:
    """a, b maximising the likelihood of the labels under sigmoid(a * logit + b) (Newton's method with a
    halving line search: the negative log-likelihood is convex). Both classes must be present."""
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or not len(x):
        raise ExportError("calibration needs as many labels as logits (and at least one)")
    if not np.isfinite(x).all():
        raise ExportError("calibration logits must be finite")
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        raise ExportError(f"calibration needs relevant and irrelevant pairs (got {positives} of {len(y)})")

    def loss(w: np.ndarray) -> float:
        z = w[0] * x + w[1]
        return float(np.sum(np.logaddexp(0.0, z) - y * z))

    w = np.array([1.0, 0.0])
    current = loss(w)
    for _ in range(100):
        p = logistic(w[0] * x + w[1])
        r = p - y
        grad = np.array([np.dot(r, x), r.sum()])
        h = p * (1.0 - p)
        hess = np.array([[np.dot(h, x * x), np.dot(h, x)], [np.dot(h, x), h.sum()]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-10:
            trial = w - t * step
            value = loss(trial)
            if value <= current:
                break
            t *= 0.5
        else:
            break
        w, previous, current = trial, current, value
        if previous - current < 1e-12 * max(1.0, abs(current)) and np.abs(t * step).max() < 1e-10:
            break
    a, b = float(w[0]), float(w[1])
    if not (math.isfinite(a) and math.isfinite(b)) or a <= 0:
        raise ExportError(
            f"the fitted map is not increasing (a={a:.4g}): the model's logits do not order relevance here"
        )
    return Platt(a, b)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> list[Bin]:
    """Equal-mass bins: the pairs sorted by predicted probability, cut into `bins` runs of (nearly) equal size."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    out = []
    for chunk in np.array_split(order, min(bins, len(order))):
        if not len(chunk):
            continue
        out.append(
            Bin(
                pairs=len(chunk),
                low=float(p[chunk].min()),
                high=float(p[chunk].max()),
                predicted=float(p[chunk].mean()),
                observed=float(y[chunk].mean()),
            )
        )
    return out


def ece(table: Sequence[Bin]) -> float:
    """Expected calibration error: the pair-weighted mean |observed rate - mean predicted| over the bins."""
    total = sum(b.pairs for b in table)
    return sum(b.pairs * abs(b.observed - b.predicted) for b in table) / total


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean((np.asarray(probs, dtype=np.float64) - np.asarray(labels, dtype=np.float64)) ** 2))


@dataclass(frozen=True)
class Figures:
    """Held-out figures of one set of pairs: before (the plain activation) and after the map."""

    pairs: int
    relevant: int
    ece_before: float
    ece_after: float
    brier_before: float
    brier_after: float
    reliability_before: tuple[Bin, ...]
    reliability_after: tuple[Bin, ...]

    @classmethod
    def of(cls, before: np.ndarray, after: np.ndarray, labels: np.ndarray, bins: int) -> Figures:
        table_before, table_after = reliability(before, labels, bins), reliability(after, labels, bins)
        return cls(
            pairs=len(labels),
            relevant=int(np.sum(labels)),
            ece_before=ece(table_before),
            ece_after=ece(table_after),
            brier_before=brier(before, labels),
            brier_after=brier(after, labels),
            reliability_before=tuple(table_before),
            reliability_after=tuple(table_after),
        )

    def as_dict(self, *, tables: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pairs": self.pairs,
            "relevant": self.relevant,
            "ece_before": round(self.ece_before, 6),
            "ece_after": round(self.ece_after, 6),
            "brier_before": round(self.brier_before, 6),
            "brier_after": round(self.brier_after, 6),
        }
        if tables:
            out["reliability_before"] = [b.as_dict() for b in self.reliability_before]
            out["reliability_after"] = [b.as_dict() for b in self.reliability_after]
        return out


def _flat(queries: Sequence[LabelledQuery], logits: dict[str, list[float]]) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([v for q in queries for v in logits[_key(q)]], dtype=np.float64)
    y = np.array([v for q in queries for v in q.labels], dtype=np.float64)
    return x, y


def _key(q: LabelledQuery) -> str:
    return f"{q.data}/{q.query_id}"


@dataclass(frozen=True)
class VariantFit:
    """One precision's map and its held-out figures, pooled and per folder."""

    precision: str
    variant: str  # the manifest variant whose logits were scored ("int8", "fp32-opt", ...)
    file: str
    platt: Platt
    held_out: Figures
    by_data: dict[str, Figures]

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": self.platt.a,
            "b": self.platt.b,
            "scored_variant": self.variant,
            "file": self.file,
            "held_out": {
                **self.held_out.as_dict(),
                "by_data": {name: f.as_dict(tables=False) for name, f in self.by_data.items()},
            },
        }


def fit_variant(
    precision: str,
    variant: str,
    file: str,
    fit: Sequence[LabelledQuery],
    held: Sequence[LabelledQuery],
    logits: dict[str, list[float]],
    *,
    activation: Callable[[np.ndarray], np.ndarray] = logistic,
    bins: int = BINS,
) -> VariantFit:
    """Fit on `fit`, measure on `held` (pooled, then per folder)."""
    platt = fit_platt(*_flat(fit, logits))

    def figures(queries: Sequence[LabelledQuery]) -> Figures:
        x, y = _flat(queries, logits)
        return Figures.of(activation(x), platt(x), y, bins)

    by_data = {
        data: figures([q for q in held if q.data == data]) for data in dict.fromkeys(q.data for q in held)
    }
    return VariantFit(precision, variant, file, platt, figures(held), by_data)


# --- scoring with the exported model ----------------------------------------------------------------------
def score_queries(
    repository: Path,
    name: str,
    queries: Sequence[LabelledQuery],
    precision: Precision,
    *,
    max_length: int | None = None,
    cache: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Every candidate's logit per query (`data/query_id`), as the gateway's CPU path scores it with the
    `precision` variant (`export.calibrate.cpu_logits`). With `cache` (a folder), logits already scored for
    this model version, variant and length are read back and new ones appended: an interrupted run resumes."""
    from export.calibrate import cpu_logits

    spec, variant = _variant(repository, name, precision)
    out: dict[str, list[float]] = {}
    path = None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / f"{name}-{variant}-{max_length or spec.max_length}-{spec.version[:12]}.jsonl"
        if path.is_file():
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                out[rec["key"]] = rec["logits"]
    todo = [q for q in queries if _key(q) not in out or len(out[_key(q)]) != len(q.documents)]
    started, done = time.perf_counter(), 0
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start : start + CHUNK]
        items = [{"query": q.query, "documents": list(q.documents)} for q in chunk]
        scored = cpu_logits(repository, name, items, max_length, precision=precision)
        for q, values in zip(chunk, scored, strict=True):
            out[_key(q)] = values
        if path is not None:
            with path.open("a") as fh:
                for q in chunk:
                    fh.write(json.dumps({"key": _key(q), "logits": out[_key(q)]}) + "\n")
        done += sum(len(q.documents) for q in chunk)
        if progress is not None:
            rate = done / max(1e-9, time.perf_counter() - started)
            progress(f"{name} {variant}: {start + len(chunk)}/{len(todo)} queries ({rate:.1f} pairs/s)")
    return {_key(q): out[_key(q)] for q in queries}


def _variant(repository: Path, name: str, precision: Precision) -> tuple[Any, str]:
    """The model's spec and the variant the gateway's CPU path loads for `precision` (int8 or fp32)."""
    from gateway.cpu_features import cpu_flags, cpu_variant
    from gateway.repository import read_model_spec

    spec = read_model_spec(repository, name)
    variant, _ = cpu_variant(spec, precision, cpu_flags())
    return spec, variant


def _activation(repository: Path, name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The manifest's own activation: the "before" the calibration is measured against."""
    from gateway.repository import read_model_spec

    if read_model_spec(repository, name).score_activation == "identity":
        return lambda x: np.asarray(x, dtype=np.float64)
    return logistic


# --- the whole step ---------------------------------------------------------------------------------------
def calibrate_scores(
    repository: Path,
    name: str,
    folders: Sequence[Path],
    *,
    max_queries: int | None = None,
    seed: int = SEED,
    bins: int = BINS,
    max_length: int | None = None,
    cache: Path | None = None,
    plot: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score, fit and measure `<repository>/<name>` on the pooled folders; write `score_calibration` into its
    manifest.json (and the reliability plot beside it); return the entry."""
    if not folders:
        raise ExportError("score calibration needs at least one BEIR folder")
    queries = [q for folder in folders for q in read_beir(folder, max_queries=max_queries, seed=seed)]
    fit, held = split_queries(queries, seed)
    if not fit or not held:
        raise ExportError(f"score calibration needs at least 2 queries per folder (got {len(queries)})")
    activation = _activation(repository, name)
    fits: dict[str, VariantFit] = {}
    for precision in PRECISIONS:
        spec, variant = _variant(repository, name, precision)
        logits = score_queries(
            repository, name, queries, precision, max_length=max_length, cache=cache, progress=progress
        )
        fits[precision] = fit_variant(
            precision,
            variant,
            spec.variants[variant]["file"],
            fit,
            held,
            logits,
            activation=activation,
            bins=bins,
        )
    folder = Path(repository) / name
    plotted = (
        write_plot(folder / PLOT, {f"{name} {p}": f.held_out for p, f in fits.items()}) if plot else False
    )
    entry = {
        "method": METHOD,
        "formula": FORMULA,
        "variants": {p: f.as_dict() for p, f in fits.items()},
        "data": [_data_entry(folder_path, queries) for folder_path in folders],
        "split": {"by": "query", "seed": seed, "fitted_share": 0.5, "max_queries_per_folder": max_queries},
        "queries": {"fitted": len(fit), "held_out": len(held)},
        "pairs": {"fitted": sum(len(q.labels) for q in fit), "held_out": sum(len(q.labels) for q in held)},
        "bins": bins,
        "binning": "equal-mass",
        "max_length": max_length or spec.max_length,
        "plot": PLOT if plotted else None,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["score_calibration"] = entry
    staged = manifest_path.with_suffix(".json.tmp")
    staged.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(staged, manifest_path)  # a gateway or scorer reading the manifest never sees half of it
    return entry


def _data_entry(folder: Path, queries: Sequence[LabelledQuery]) -> dict[str, Any]:
    members = [q for q in queries if q.data == Path(folder).name]
    return {
        "name": Path(folder).name,
        "path": str(Path(folder).resolve()),
        "candidates": RUN_FILE if (Path(folder) / RUN_FILE).is_file() else "judged + random",
        "queries": len(members),
        "pairs": sum(len(q.labels) for q in members),
        "relevant": sum(sum(q.labels) for q in members),
    }


def write_plot(path: Path, figures: dict[str, Figures]) -> bool:
    """Reliability diagrams (mean predicted against observed rate per bin, before and after) as a PNG; False
    when matplotlib is not installed (the tables are in the manifest either way)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(figures), figsize=(5 * len(figures), 4.6), squeeze=False)
    for ax, (label, f) in zip(axes[0], figures.items(), strict=True):
        top = max(
            [b.predicted for b in (*f.reliability_before, *f.reliability_after)]
            + [b.observed for b in (*f.reliability_before, *f.reliability_after)]
        )
        top = min(1.0, top * 1.1 + 0.01)
        ax.plot([0, top], [0, top], color="0.6", linestyle="--", linewidth=1, label="perfect")
        for table, style, name in (
            (f.reliability_before, "o-", f"sigmoid (ECE {f.ece_before:.3f})"),
            (f.reliability_after, "s-", f"calibrated (ECE {f.ece_after:.3f})"),
        ):
            ax.plot(
                [b.predicted for b in table], [b.observed for b in table], style, label=name, markersize=4
            )
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel("mean predicted P(relevant) per bin")
        ax.set_ylabel("observed relevant share")
        ax.set_title(f"{label}: {f.pairs} held-out pairs")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def summary_line(name: str, entry: dict[str, Any]) -> str:
    parts = [
        f"{name} score calibration ({entry['queries']['fitted']}+{entry['queries']['held_out']} queries)"
    ]
    for precision, v in entry["variants"].items():
        h = v["held_out"]
        parts.append(
            f"{precision}: a={v['a']:.3f} b={v['b']:.3f}, held-out ECE {h['ece_before']:.4f} -> "
            f"{h['ece_after']:.4f}, Brier {h['brier_before']:.4f} -> {h['brier_after']:.4f}"
        )
    return "; ".join(parts)


# --- CLI ------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m export.score_calibration",
        description="Calibrate an exported model's scores (logit -> P(relevant)) on BEIR folders, without "
        "exporting again; writes `score_calibration` into its manifest.json.",
    )
    parser.add_argument("folders", nargs="+", type=Path, help="BEIR folders (pooled)")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--name", default="reranker", help="model folder in the repository")
    parser.add_argument(
        "--max-queries", type=int, default=None, help="a seeded choice of N queries per folder (default all)"
    )
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--bins", type=int, default=BINS, help="equal-mass bins of the reliability table")
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="pair length the model is served at (default: the model's; the prefilter's is 128)",
    )
    parser.add_argument(
        "--logits-cache", type=Path, default=None, help="folder caching the logits (resumable)"
    )
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from gateway.errors import ModelRepositoryError

    args = parse_args(argv)

    def progress(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    try:
        entry = calibrate_scores(
            args.repository,
            args.name,
            args.folders,
            max_queries=args.max_queries,
            seed=args.seed,
            bins=args.bins,
            max_length=args.max_length,
            cache=args.logits_cache,
            progress=progress,
        )
    except (ExportError, ModelRepositoryError) as exc:
        print(f"score calibration failed: {exc}", file=sys.stderr)
        return 1
    progress(summary_line(args.name, entry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
