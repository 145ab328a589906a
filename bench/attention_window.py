"""`python -m bench.attention_window`: would a banded attention make ModernBERT's local layers faster on the CPU?

ModernBERT's local layers (2 of every 3) attend within 64 tokens either side, but the fused graph
(export/fusion.py) runs them as ONNX Runtime's MultiHeadAttention over all pairs with the window as an additive
bias: at 512 tokens, 512 keys a query where 129 count. ONNX Runtime's CPU kernels have a sliding window only for
causal decoders (GroupQueryAttention's `local_window_size`). The way to compute only the band with its own
kernels: cut the queries into blocks, give each block the keys within 64 tokens of any of its queries (64 queries:
192 keys, 37.5% of the score work at 512 tokens; 128 queries: 256 keys, 50%) and run MultiHeadAttention on the
blocks as rows of a batch, with the band and the padding as the bias.

This measures one layer's attention both ways on the same random inputs (interleaved, one ONNX Runtime session
each, `--threads` threads), checks that they give the same output, and times the blocks' assembly (pads,
slices, concatenations, the bias) apart from the attention on them. Writes bench/results/attention_window.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
WINDOW = 64  # tokens either side (ModernBERT's local_attention 128 / 2)
BLOCKS = (64, 128)  # queries per block; each block sees block + 2 * WINDOW keys (a multiple of the block)


def _session(model: Any, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # as the gateway's sessions: denormals flushed, and no spinning threads (a session's idle pool would spin on
    # the cores the next one in the interleaved loop runs on)
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def attention_graph(shapes: dict[str, list[int | str]], heads: int) -> Any:
    """One MultiHeadAttention node (com.microsoft) over q, k, v with an additive bias."""
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shapes[n]) for n in ("q", "k", "v", "bias")]
    node = helper.make_node(
        "MultiHeadAttention",
        ["q", "k", "v", "", "", "bias"],
        ["out"],
        domain="com.microsoft",
        num_heads=heads,
    )
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    model = helper.make_model(
        helper.make_graph([node], "attention", inputs, [out]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    model.ir_version = 8  # what every onnxruntime of this project reads
    return model


def _blocks_graph(batch: int, seq: int, hidden: int, block: int, folder: Path) -> Any:
    """The blocks' assembly as an ONNX graph (traced from PyTorch): q, k, v [B, S, E] and the attention mask
    [B, S] -> query blocks [B*n, block, E], key and value windows [B*n, span, E] (span = block + 2*WINDOW),
    and the bias [B*n, 1, block, span] (0 inside the band on real tokens, else -1e30)."""
    import warnings

    import onnx
    import torch
    from torch.nn import functional

    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # the shapes are meant as constants

    span = block + 2 * WINDOW
    assert span % block == 0, "the windows are cut as whole blocks"

    class Blocks(torch.nn.Module):
        def forward(self, q: Any, k: Any, v: Any, mask: Any) -> Any:
            b, s, e = q.shape
            pad = (block - s % block) % block
            n = (s + pad) // block
            q = functional.pad(q, (0, 0, 0, pad)).reshape(b * n, block, e)

            def windows(x: Any, width: int) -> Any:  # [b, s(, e)] -> [b*n, span(, e)]
                x = functional.pad(x, (0, 0, WINDOW, pad + WINDOW) if width else (WINDOW, pad + WINDOW))
                parts = [x[:, i * block : i * block + n * block] for i in range(span // block)]
                shape = (b, n, block, width) if width else (b, n, block)
                joined = torch.cat([p.reshape(shape) for p in parts], 2)
                return joined.reshape((b * n, span, width) if width else (b * n, span))

            row = torch.arange(block).view(block, 1)
            key = torch.arange(span).view(1, span) - WINDOW
            band = ((key - row).abs() <= WINDOW).view(1, 1, block, span)
            real = windows(mask, 0).view(b * n, 1, 1, span) > 0
            bias = torch.where(band & real, 0.0, -1e30)
            return q, windows(k, e), windows(v, e), bias

    sample = [torch.randn(batch, seq, hidden) for _ in range(3)]
    path = folder / f"blocks{block}.onnx"
    torch.onnx.export(  # traced at the measured shape: the block count and padding are constants of it
        Blocks(),
        (*sample, torch.ones(batch, seq, dtype=torch.int64)),
        str(path),
        input_names=["q", "k", "v", "mask"],
        output_names=["bq", "bk", "bv", "bbias"],
        opset_version=17,
        dynamo=False,
    )
    model = onnx.load(str(path))
    model.ir_version = 8
    return model


def _with_attention(blocks: Any, heads: int) -> Any:
    """The assembly followed by MultiHeadAttention on the blocks: [B*n, block, E]."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.ModelProto()
    model.CopyFrom(blocks)
    graph = model.graph
    graph.node.append(
        helper.make_node(
            "MultiHeadAttention",
            ["bq", "bk", "bv", "", "", "bbias"],
            ["out"],
            domain="com.microsoft",
            num_heads=heads,
        )
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("out", TensorProto.FLOAT, None))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def _median_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1000, 2)


def measure(
    *, batch: int, seq: int, heads: int, head_dim: int, repeats: int, threads: int, folder: Path
) -> dict[str, Any]:
    """One layer's attention, full with the band as a bias and on the blocks, timed interleaved, on a thread
    that flushes denormals to zero, as the gateway's CPU lane does (gateway/denormals.py)."""
    from gateway.denormals import flush_denormals

    flushed = flush_denormals()
    hidden = heads * head_dim
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((batch, seq, hidden), dtype=np.float32) for n in ("q", "k", "v")}
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[-1, seq - seq // 4 :] = 0  # the last pair padded by a quarter
    pos = np.arange(seq)
    band = np.abs(pos[:, None] - pos[None, :]) <= WINDOW
    bias = np.where(band[None, None] & (mask[:, None, None, :] > 0), 0.0, -1e30).astype(np.float32)
    full = _session(
        attention_graph({n: [batch, seq, hidden] for n in "qkv"} | {"bias": [batch, 1, seq, seq]}, heads),
        threads,
    )
    expected = full.run(None, {**feeds, "bias": bias})[0]
    real = mask.astype(bool)
    runs: dict[str, tuple[Any, dict[str, np.ndarray]]] = {"full": (full, {**feeds, "bias": bias})}
    diffs: dict[str, float] = {}
    for block in BLOCKS:
        blocks_model = _blocks_graph(batch, seq, hidden, block, folder)
        assembly = _session(blocks_model, threads)
        banded = _session(_with_attention(blocks_model, heads), threads)
        bq, bk, bv, bbias = assembly.run(None, {**feeds, "mask": mask})
        shapes = {"q": list(bq.shape), "k": list(bk.shape), "v": list(bv.shape), "bias": list(bbias.shape)}
        on_blocks = _session(attention_graph(shapes, heads), threads)
        got = banded.run(None, {**feeds, "mask": mask})[0].reshape(batch, -1, hidden)[:, :seq]
        diffs[str(block)] = float(np.abs(expected[real] - got[real]).max())  # padded queries mean nothing
        runs[f"banded_{block}"] = (banded, {**feeds, "mask": mask})
        runs[f"assembly_{block}"] = (assembly, {**feeds, "mask": mask})
        runs[f"attention_on_blocks_{block}"] = (on_blocks, {"q": bq, "k": bk, "v": bv, "bias": bbias})
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (session, inputs) in runs.items():
            started = time.perf_counter()
            session.run(None, inputs)
            times[name].append(time.perf_counter() - started)
    medians = {name: _median_ms(t) for name, t in times.items()}
    return {
        "batch": batch,
        "seq": seq,
        "heads": heads,
        "head_dim": head_dim,
        "threads": threads,
        "repeats": repeats,
        "denormals_flushed": flushed,
        "blocks": list(BLOCKS),
        "max_abs_diff": diffs,
        "median_ms": medians,
        "banded_over_full": {str(b): round(medians[f"banded_{b}"] / medians["full"], 3) for b in BLOCKS},
    }


def markdown(r: dict[str, Any]) -> str:
    m = r["median_ms"]
    rows = [
        f"| MultiHeadAttention over all pairs, the band as a bias (what the fused graph runs) | {m['full']} | 1.00 |"
    ]
    for b in r["blocks"]:
        keys = b + 2 * WINDOW
        rows += [
            f"| banded, blocks of {b} queries x {keys} keys ({keys / r['seq']:.1%} of the scores): the blocks' "
            f"assembly + MultiHeadAttention on them | {m[f'banded_{b}']} | {r['banded_over_full'][str(b)]:.2f} |",
            f"| of which the assembly (pads, slices, concatenations, the bias) | {m[f'assembly_{b}']} | |",
            f"| of which MultiHeadAttention on the blocks | {m[f'attention_on_blocks_{b}']} | |",
        ]
    best = min(r["banded_over_full"].values())
    return "\n".join(
        [
            "# Banded attention for ModernBERT's local layers (`python -m bench.attention_window`)",
            "",
            f"One layer's attention, {r['batch']} pairs x {r['seq']} tokens, {r['heads']} heads x {r['head_dim']}, "
            f"{r['threads']} ONNX Runtime threads, median of {r['repeats']} interleaved runs; the window {WINDOW} "
            "tokens either side. Denormals "
            + ("flushed to zero, as the gateway's CPU lane does." if r.get("denormals_flushed") else "kept.")
            + " (Before 2026-12-05 they were kept: `git show a727eed:bench/results/attention_window.md`.)",
            "",
            "| computation | median ms | x full |",
            "|---|---:|---:|",
            *rows,
            "",
            f"The best banded computation took **{best:.2f}x** the full one's time; outputs agree within "
            f"{max(r['max_abs_diff'].values()):.1e}.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(
        prog="python -m bench.attention_window", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS, help="folder for attention_window.{json,md}")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        result = measure(
            batch=args.batch,
            seq=args.seq,
            heads=args.heads,
            head_dim=args.head_dim,
            repeats=args.repeats,
            threads=args.threads,
            folder=Path(folder),
        )
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "attention_window.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (args.output / "attention_window.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
