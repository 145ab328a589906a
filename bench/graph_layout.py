"""`python -m bench.graph_layout --source FOLDER`: what one of the exporter's rewrites of the fused graph is worth
on one model: `--rewrite layout` (export/graph_layout.py: attention inputs unpacked from the packed projection,
packed MatMuls split at their weights) or `--rewrite pooled-token` (export/pooled_token.py: the last layer
computed for the token the score reads).

From the source model folder it builds the fused fp32 graph without the rewrite and a copy with it, and the
int8 file of each (the exporter's own functions, without the gate). Then it runs one batch of `--rows` pairs of
`--tokens` tokens (the last pair padded by a fifth) through each file, interleaved round by round (the order
rotated), in the gateway's sessions (`make_session`, CPU arena on), `--threads` threads. Figures: mean ms a
batch, the ratio to the same precision without the rewrite, max |diff| of the logits against it, and the
time onnxruntime's profiler gives each op type in one more run. Writes bench/results/graph_layout.{json,md}
(`--output`, `--name`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import cpu_kernels

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Rewrite:
    """One rewrite the bench compares: its module, the names of the graphs without and with it, and the
    `fusion.optimize_variant` switch that leaves it out."""

    module: str
    kinds: tuple[str, str]
    switch: str
    title: str

    def apply(self, path: Path) -> dict[str, int]:
        module = importlib.import_module(f"export.{self.module}")
        counts: dict[str, int] = module.rewrite_file(path)
        return counts


REWRITES = {
    "layout": Rewrite("graph_layout", ("packed", "unpacked"), "layout_rewrites",
                      "The fused graph's layout: attention inputs unpacked, packed MatMuls split"),
    "pooled-token": Rewrite("pooled_token", ("all-tokens", "pooled-token"), "pooled_token_only",
                            "The last layer computed for the pooled token only"),
}  # fmt: skip
KINDS = REWRITES["layout"].kinds


def build_graphs(
    source: Path, work: Path, rewrite: Rewrite = REWRITES["layout"]
) -> tuple[Any, dict[str, Path], dict[str, int]]:
    """(the model's config, {"fp32 <without>": ..., "fp32 <with>": ..., "int8 ...": ...}, the rewrite's counts)."""
    without, with_ = (work / f"{kind}.onnx" for kind in rewrite.kinds)
    config, family, _ = cpu_kernels.fused_graph(source, without, **{rewrite.switch: False})
    shutil.copy(without, with_)
    counts = rewrite.apply(with_)
    if not any(counts.values()):
        raise SystemExit(f"{source}: the fused graph has nothing export/{rewrite.module}.py rewrites")
    graphs = {f"fp32 {rewrite.kinds[0]}": without, f"fp32 {rewrite.kinds[1]}": with_}
    return config, cpu_kernels.with_int8(family, graphs), counts


def _op_times(path: Path, feed: dict[str, np.ndarray], threads: int, folder: Path) -> dict[str, float]:
    """ms per op type in one profiled run (after a warm-up), largest first."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_mem_pattern = False
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / path.stem)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, feed)
    session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    times: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            times[op] = times.get(op, 0.0) + event["dur"] / 2000  # two runs, microseconds -> ms a run
    return {op: round(ms, 1) for op, ms in sorted(times.items(), key=lambda kv: -kv[1])}


def measure(
    graphs: dict[str, Path], *, rows: int, tokens: int, vocab: int, rounds: int, threads: int, folder: Path
) -> list[dict[str, Any]]:
    """Each graph's mean ms a batch, its ratio to the first graph of its precision (the one without the
    rewrite), the logits' max |diff| against that one and the profiler's op times."""
    from gateway.backends.onnx_local import make_session

    runs = [{"graph": name, "session": make_session(path, device="cpu", threads=threads)}
            for name, path in graphs.items()]  # fmt: skip
    feeds = [cpu_kernels.feed(r["session"], tokens, vocab, rows, padded=tokens // 5) for r in runs]
    for run, inputs in zip(runs, feeds, strict=True):
        run["logits"] = run["session"].run(None, inputs)[0]  # also the warm-up
    calls = [
        lambda r=run, f=inputs: r["session"].run(None, f) for run, inputs in zip(runs, feeds, strict=True)
    ]
    for run, seconds in zip(runs, cpu_kernels.interleaved(calls, rounds), strict=True):
        run["seconds"] = seconds
    out = []
    for run, feed in zip(runs, feeds, strict=True):
        precision = run["graph"].split()[0]
        base = next(r for r in runs if r["graph"].split()[0] == precision)
        ms = 1000 * float(np.mean(run["seconds"]))
        out.append({
            "graph": run["graph"], "ms": round(ms, 1),
            "x_without": round(1000 * float(np.mean(base["seconds"])) / ms, 3),
            "max_abs_diff": float(np.abs(run["logits"] - base["logits"]).max()),
            "op_ms": _op_times(graphs[run["graph"]], feed, threads, folder),
        })  # fmt: skip
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# {results['title']} (export/{results['module']}.py)",
        "",
        f"`{results['command']}`, {results['started']}, {results['seconds']:.0f} s, {results['threads']} threads "
        f"on {results['cpu']}: one batch of {results['batch_rows']} pairs x {results['tokens']} tokens through each "
        f"file, {results['rounds']} rounds interleaved, the gateway's sessions. Model `{results['source']}` "
        f"({results['model_type']}); rewrites: {results['rewrites']}.",
        "",
        "x without: the same precision's graph without the rewrite over this one (above 1 is faster). max |diff|: "
        "the logits against that graph.",
        "",
        "| precision | graph | ms a batch | x without | max abs diff | the five slowest op types, ms a batch |",
        "|---|---|---:|---:|---:|---|",
    ]
    for row in results["measured"]:
        precision, kind = row["graph"].split()
        ops = ", ".join(f"{op} {ms:.0f}" for op, ms in list(row["op_ms"].items())[:5])
        lines.append(
            f"| {precision} | {kind} | {row['ms']:.0f} | {row['x_without']:.2f} | {row['max_abs_diff']:.2e} | {ops} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import sys

    from bench.cli import machine

    parser = argparse.ArgumentParser(prog="python -m bench.graph_layout", description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="a Hugging Face model folder")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rewrite", choices=sorted(REWRITES), default="layout", help="the rewrite compared")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--name", default="graph_layout", help="file stem of the results")
    args = parser.parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    with tempfile.TemporaryDirectory(prefix="graph-layout-") as work:
        rewrite = REWRITES[args.rewrite]
        config, graphs, counts = build_graphs(args.source, Path(work), rewrite)
        rows = measure(
            graphs, rows=args.rows, tokens=args.tokens, vocab=int(config.vocab_size), rounds=args.rounds,
            threads=args.threads, folder=Path(work),
        )  # fmt: skip
    results = {
        "command": "python -m bench.graph_layout " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": started.isoformat(timespec="seconds"), "source": str(args.source), "model_type": config.model_type,
        "batch_rows": args.rows, "tokens": args.tokens, "rounds": args.rounds, "threads": args.threads,
        "cpu": machine().get("cpu", "unknown CPU"), "rewrites": counts, "measured": rows,
        "rewrite": args.rewrite, "module": rewrite.module, "title": rewrite.title,
        "seconds": (dt.datetime.now(dt.timezone.utc) - started).total_seconds(),
    }  # fmt: skip
    cpu_kernels.write(args.output, args.name, results, markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
