"""`python -m bench.denormals`: what flushing denormals to zero on the CPU lane's threads is worth
(gateway/denormals.py, `RERANKER_FLUSH_DENORMALS`).

A masked attention gives its masked keys softmax weights near FLT_MIN / the row's sum, denormal numbers, which the
CPU computes with on a slow path. This times, on one thread each way, interleaved, the same session run on a
thread that flushes denormals and on one that keeps them:

1. one ModernBERT-base local attention layer (`MultiHeadAttention`, 12 heads x 64, one 512-token pair, keys
   beyond 64 tokens masked with float32's minimum as the exported graph does), and the same layer with nothing
   masked, which makes no denormals;
2. each `--model` ONNX file (an exported cross-encoder: input ids and an attention mask, all ones), one pair of
   `--tokens` tokens.

Each row says whether both runs gave the same outputs, bit for bit. Writes bench/results/denormals.{json,md}
(`--output`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.attention_window import WINDOW, attention_graph
from bench.cli import machine

RESULTS = Path(__file__).resolve().parent / "results"
SEQUENCE, HEADS, HEAD_SIZE = 512, 12, 64  # ModernBERT-base; its local layers see WINDOW tokens either side


def banded_attention(path: Path, *, masked: bool = True) -> dict[str, np.ndarray]:
    """Write one local attention layer to `path` (bench/attention_window.py's graph); its inputs (`masked`
    False: a bias of zeros)."""
    import onnx

    s, e = SEQUENCE, HEADS * HEAD_SIZE
    onnx.save(attention_graph({n: [1, s, e] for n in "qkv"} | {"bias": [1, 1, s, s]}, HEADS), str(path))
    rng = np.random.default_rng(0)
    feed = {n: rng.standard_normal((1, s, e), dtype=np.float32) for n in "qkv"}
    i = np.arange(s)
    band = np.abs(i[:, None] - i[None, :]) <= WINDOW
    fill = np.finfo(np.float32).min if masked else 0.0
    feed["bias"] = np.where(band, 0.0, fill).astype(np.float32)[None, None]
    return feed


def pair_feed(session: Any, tokens: int) -> dict[str, np.ndarray]:
    """One unpadded pair for an exported cross-encoder: ids drawn from its first 1,000, a mask of ones."""
    rng = np.random.default_rng(0)
    feed: dict[str, np.ndarray] = {}
    for i in session.get_inputs():
        if i.name == "input_ids":
            feed[i.name] = rng.integers(5, 1000, (1, tokens)).astype(np.int64)
        elif i.name in ("attention_mask", "token_type_ids"):
            feed[i.name] = (np.ones if i.name == "attention_mask" else np.zeros)((1, tokens), np.int64)
        else:
            raise SystemExit(
                f"{i.name}: not an input this bench feeds (input_ids, attention_mask, token_type_ids)"
            )
    return feed


def _timed_on_thread(flush: bool, run: Callable[[], Any], rounds: int) -> tuple[list[float], Any]:
    """`run` `rounds` times (after one warm-up) on a new thread that flushes denormals or keeps them."""
    from gateway.denormals import flush_denormals

    out: dict[str, Any] = {}

    def work() -> None:
        if flush_denormals(flush) != flush:
            out["error"] = "this thread's denormal mode could not be set here"
            return
        out["result"] = run()
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        out["times"] = times

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    if "error" in out:
        raise SystemExit(out["error"])
    return out["times"], out["result"]


def measure(
    label: str, path: Path, feed: dict[str, np.ndarray], threads: int, repeats: int
) -> dict[str, Any]:
    from gateway.backends.onnx_local import make_session

    sessions = {
        flush: make_session(path, device="cpu", threads=threads, flush_denormals=flush)
        for flush in (True, False)
    }
    times: dict[bool, list[float]] = {True: [], False: []}
    outputs: dict[bool, Any] = {}
    for _ in range(repeats):  # interleaved: the two modes see the same moments of a shared machine
        for flush, session in sessions.items():
            t, outputs[flush] = _timed_on_thread(flush, lambda s=session: s.run(None, feed), 3)
            times[flush] += t
    kept, flushed = (statistics.median(times[f]) for f in (False, True))
    same = all(np.array_equal(a, b) for a, b in zip(outputs[True], outputs[False], strict=True))
    row = {"label": label, "kept_ms": kept * 1e3, "flushed_ms": flushed * 1e3, "speedup": kept / flushed,
           "same_outputs": same}  # fmt: skip
    print(f"{label:60s} kept {row['kept_ms']:8.1f} ms  flushed {row['flushed_ms']:8.1f} ms  "
          f"{row['speedup']:.2f}x  same outputs: {same}", flush=True)  # fmt: skip
    return row


def run(models: Sequence[Path], *, tokens: int, threads: int, repeats: int, work: Path) -> dict[str, Any]:
    import onnxruntime as ort

    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for masked in (True, False):
        path = work / f"attention-{'masked' if masked else 'open'}.onnx"
        feed = banded_attention(path, masked=masked)
        what = "keys beyond 64 tokens masked" if masked else "nothing masked"
        rows.append(measure(f"one local attention layer, {what}", path, feed, threads, repeats))
    for model in models:
        feed = pair_feed(ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]), tokens)
        rows.append(measure(f"{model.parent.parent.name}/{model.name}, one {tokens}-token pair", model, feed,
                            threads, repeats))  # fmt: skip
    return {"threads": threads, "tokens": tokens, "repeats": repeats, "machine": machine(), "rows": rows}


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Denormals flushed to zero on the CPU lane's threads (`python -m bench.denormals`)",
        "",
        f"{results['threads']} ONNX Runtime thread(s) per session, on {results['machine'].get('cpu', '?')}; median of "
        f'{3 * results["repeats"]} runs each way, the two ways interleaved. "kept": the thread keeps denormal '
        'numbers (`RERANKER_FLUSH_DENORMALS=0`, the behaviour before 2026-12-05); "flushed": it flushes them to '
        "zero (the default).",
        "",
        "| computation | kept ms | flushed ms | flushed speed-up | same outputs, bit for bit |",
        "|---|---:|---:|---:|---|",
    ]
    for r in results["rows"]:
        lines.append(f"| {r['label']} | {r['kept_ms']:.1f} | {r['flushed_ms']:.1f} | {r['speedup']:.2f}x | "
                     f"{'yes' if r['same_outputs'] else 'no'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.denormals", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, action="append", default=[], help="an exported ONNX file (repeatable)"
    )
    parser.add_argument("--tokens", type=int, default=SEQUENCE, help="tokens of the pair fed to each --model")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (the CPU lane's default: 1)")
    parser.add_argument("--repeats", type=int, default=6, help="rounds of 3 runs each way")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / ".work" / "denormals")
    args = parser.parse_args(argv)
    missing = [str(m) for m in args.model if not m.is_file()]
    if missing:
        parser.error(f"--model: no such file: {', '.join(missing)}")
    results = run(args.model, tokens=args.tokens, threads=args.threads, repeats=args.repeats, work=args.work)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "denormals.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.output / "denormals.md").write_text(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
