"""`python -m bench.cpu_kernels --source FOLDER`: what two CPU choices are worth on one model's graphs.

1. LayerNorms as plain ops (export/layer_norm.py) against ONNX Runtime's fused LayerNorm kernels, whose
   per-row loop is scalar.
2. The session's CPU memory arena (gateway/backends/onnx_local.py `make_session`) on against off. Between
   runs the heap is handed back to the OS every `FairLane.TRIM_EVERY` batches, as the gateway's CPU lane does:
   without the arena, a batch after that starts on fresh pages.

From the source model folder it builds the fused fp32 graph twice (its LayerNorms fused, and as plain ops) and
the int8 file of each, the exporter's own functions without the gate; then runs one pair of `--tokens` tokens
through each file, in each arena setting, interleaved round by round (the order rotated), `--threads` threads.
Figures: mean ms a pair and the ratio to the fused-kernel graph without the arena; max |diff| of the logits
against that same graph (fp32: the same function; int8: each file's own rounding). Writes
bench/results/cpu_kernels.{json,md} (`--output`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def fused_graph(source: Path, path: Path, **switches: bool) -> tuple[Any, Any, Path]:
    """(the model's config, its family, path): the source's fused fp32 graph as the exporter's own functions
    write it (`switches`: `fusion.optimize_variant`'s, to leave one of its rewrites out)."""
    from transformers import AutoConfig, AutoTokenizer

    from export import build, fusion, onnx_export
    from export.sources import resolve_source

    model = resolve_source(str(source), quiet=True)
    family = model.family
    config = AutoConfig.from_pretrained(model.folder)
    tokenizer = AutoTokenizer.from_pretrained(model.folder, use_fast=True)
    token_ids = build._template_token_ids(tokenizer, family, model.spec)
    fp32 = path.with_name("model.onnx")
    build._export_fp32(
        model, fp32, opset=onnx_export.DEFAULT_OPSET, token_ids=token_ids, progress=build.Progress(True), quiet=True
    )  # fmt: skip
    fusion.optimize_variant(
        family, model.folder, fp32, path, num_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size), token_ids=token_ids, **switches,
    )  # fmt: skip
    return config, family, path


def with_int8(family: Any, graphs: dict[str, Path]) -> dict[str, Path]:
    """`graphs` ({"fp32 KIND": path}) and the int8 file of each ({"int8 KIND": ...}), quantized as the exporter
    does from a fused graph."""
    from export import fusion, quantize

    quantizer = fusion.int8_quantizer(family, True)
    out = dict(graphs)
    for name, path in graphs.items():
        kind = name.split(" ", 1)[1]
        out[f"int8 {kind}"] = path.with_name(f"{kind}.int8.onnx")
        quantizer(path, out[f"int8 {kind}"], quantize.INT8_SETTINGS)
    return out


def build_graphs(source: Path, work: Path) -> tuple[Any, dict[str, Path]]:
    """(the model's config, {"fp32 fused-kernel": ..., "fp32 plain-op": ..., "int8 ...": ...})."""
    from export import layer_norm

    fused, plain = work / "fused-kernel.onnx", work / "plain-op.onnx"
    config, family, _ = fused_graph(source, fused, plain_layer_norms=False)
    shutil.copy(fused, plain)
    if not layer_norm.decompose_file(plain):
        raise SystemExit(f"{source}: the fused graph has no LayerNorm to rewrite")
    return config, with_int8(family, {"fp32 fused-kernel": fused, "fp32 plain-op": plain})


def feed(session: Any, tokens: int, vocab: int, rows: int = 1, padded: int = 0) -> dict[str, np.ndarray]:
    """`rows` pairs of `tokens` random ids for the graph's inputs, the last row's final `padded` tokens masked."""
    ids = np.random.default_rng(0).integers(5, min(900, vocab), (rows, tokens))
    mask = np.ones_like(ids)
    if padded:
        mask[-1, tokens - padded :] = 0
    out = {}
    for i in session.get_inputs():
        if i.name == "input_ids":
            out[i.name] = ids
        elif i.name == "attention_mask":
            out[i.name] = mask
        else:  # token_type_ids: one segment is enough for timing
            out[i.name] = np.zeros_like(ids)
    return out


def interleaved(
    calls: list[Callable[[], Any]], rounds: int, after: Callable[[], None] | None = None
) -> list[list[float]]:
    """Seconds of each call, `rounds` times, round by round with the order rotated (`after`: run after each)."""
    seconds: list[list[float]] = [[] for _ in calls]
    order = list(range(len(calls)))
    for round_ in range(rounds):
        shift = round_ % len(calls)
        for index in order[shift:] + order[:shift]:
            start = time.perf_counter()
            calls[index]()
            seconds[index].append(time.perf_counter() - start)
            if after is not None:
                after()
    return seconds


def measure(
    graphs: dict[str, Path], *, tokens: int, vocab: int, rounds: int, threads: int
) -> list[dict[str, Any]]:
    from gateway.backends.onnx_local import FairLane, make_session
    from gateway.heap import release_heap

    runs = []
    for name, path in graphs.items():
        for arena in (False, True):
            session = make_session(path, device="cpu", threads=threads, cpu_arena=arena)
            runs.append({"graph": name, "arena": arena, "session": session})
    feeds = [feed(r["session"], tokens, vocab) for r in runs]
    for run, inputs in zip(runs, feeds, strict=True):
        run["logits"] = run["session"].run(None, inputs)[0]  # also the warm-up
    batches = 0

    def trim() -> None:  # the heap handed back every TRIM_EVERY batches, as the gateway's CPU lane does
        nonlocal batches
        batches += 1
        if batches % FairLane.TRIM_EVERY == 0:
            release_heap()

    calls = [
        lambda r=run, f=inputs: r["session"].run(None, f) for run, inputs in zip(runs, feeds, strict=True)
    ]
    for run, seconds in zip(runs, interleaved(calls, rounds, trim), strict=True):
        run["seconds"] = seconds
    rows = []
    for run in runs:
        precision = run["graph"].split()[0]
        base = next(r for r in runs if r["graph"] == f"{precision} fused-kernel" and not r["arena"])
        ms = 1000 * float(np.mean(run["seconds"]))
        rows.append({
            "graph": run["graph"], "arena": run["arena"], "ms": round(ms, 2),
            "x_baseline": round(1000 * float(np.mean(base["seconds"])) / ms, 3),
            "max_abs_diff": float(np.abs(run["logits"] - base["logits"]).max()),
        })  # fmt: skip
    return rows


def write(output: Path, name: str, results: dict[str, Any], text: str) -> None:
    """output/NAME.json and output/NAME.md; the report printed too."""
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (output / f"{name}.md").write_text(text)
    print(text)


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# CPU kernels: LayerNorms as plain ops, and the memory arena",
        "",
        f"`{results['command']}`, {results['started']}, {results['seconds']:.0f} s, {results['threads']} threads "
        f"on {results['cpu']}: one pair of {results['tokens']} tokens through each file, {results['rounds']} "
        f"rounds interleaved. Model `{results['source']}` ({results['model_type']}).",
        "",
        "Baseline of each precision: its graph with ONNX Runtime's fused LayerNorm kernels, arena off. "
        "x baseline above 1 is faster. max |diff|: the logits against that baseline (int8: each file rounds on "
        "its own).",
        "",
        "| graph | LayerNorm | arena | ms a pair | x baseline | max abs diff |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in results["rows"]:
        precision, kind = row["graph"].split()
        lines.append(
            f"| {precision} | {'plain ops' if kind == 'plain-op' else 'fused kernel'} | "
            f"{'on' if row['arena'] else 'off'} | {row['ms']:.1f} | {row['x_baseline']:.2f} | "
            f"{row['max_abs_diff']:.2e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import sys

    from bench.cli import machine

    parser = argparse.ArgumentParser(prog="python -m bench.cpu_kernels", description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="a Hugging Face model folder")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--name", default="cpu_kernels", help="file stem of the results")
    args = parser.parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    with tempfile.TemporaryDirectory(prefix="cpu-kernels-") as work:
        config, graphs = build_graphs(args.source, Path(work))
        rows = measure(
            graphs, tokens=args.tokens, vocab=int(config.vocab_size), rounds=args.rounds, threads=args.threads
        )
    results = {
        "command": "python -m bench.cpu_kernels " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": started.isoformat(timespec="seconds"), "source": str(args.source), "model_type": config.model_type,
        "tokens": args.tokens, "rounds": args.rounds, "threads": args.threads,
        "cpu": machine().get("cpu", "unknown CPU"), "rows": rows,
        "seconds": (dt.datetime.now(dt.timezone.utc) - started).total_seconds(),
    }  # fmt: skip
    write(args.output, args.name, results, markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
