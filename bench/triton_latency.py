"""Latency of one 100-document rerank request: Triton HTTP, Triton gRPC and local ONNX Runtime, side by side.

Each request is a SciFact query with its 100 BM25 candidates (document = title + " " + text), tokenized once
with the repository's tokenizer; the timed part is scoring only (tokenization is the same for every path).
Triton is the local tritonserver (`export.triton_local`, python backend running `model.onnx` with ONNX
Runtime on the CPU) started here on free ports unless URLs are given; it is called through the gateway's
`TritonScorer` (which splits 100 rows into max_batch_size chunks sent concurrently). Local ONNX Runtime
runs the same fp32 file in-process (and the int8 file, the gateway's default CPU variant). Paths are
interleaved per request so load drift on a shared machine hits them alike.

    python -m bench.triton_latency --model-repository model_repository --queries 3 --repeats 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: bench/ is not installed

from bench.service import free_ports
from export.triton_local import TritonServer, install
from gateway.backends.base import EncodedBatch
from gateway.backends.triton import TritonScorer

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"


def load_requests(data: Path, count: int, documents: int) -> list[tuple[str, list[str]]]:
    queries = {}
    with (data / "queries.jsonl").open() as fh:
        for line in fh:
            row = json.loads(line)
            queries[row["_id"]] = row["text"]
    candidates = []
    with (data / "bm25_top100.jsonl").open() as fh:
        for line in fh:
            row = json.loads(line)
            candidates.append((row["query_id"], row["doc_ids"][:documents]))
            if len(candidates) == count:
                break
    wanted = {doc_id for _, ids in candidates for doc_id in ids}
    corpus = {}
    with (data / "corpus.jsonl").open() as fh:
        for line in fh:
            row = json.loads(line)
            if row["_id"] in wanted:
                corpus[row["_id"]] = (row.get("title", "") + " " + row.get("text", "")).strip()
    return [(queries[qid], [corpus[d] for d in ids]) for qid, ids in candidates]


def make_encoder(model_dir: Path, max_length: int) -> Callable[[str, list[str]], dict[str, np.ndarray]]:
    from tokenizers import Tokenizer

    manifest = json.loads((model_dir / "manifest.json").read_text())
    names = [tensor["name"] for tensor in manifest["inputs"]]
    tokenizer = Tokenizer.from_file(
        str(model_dir / manifest.get("tokenizer_dir", "tokenizer") / "tokenizer.json")
    )
    tokenizer.enable_truncation(max_length=max_length, strategy="only_second")
    tokenizer.enable_padding()

    def encode(query: str, documents: list[str]) -> dict[str, np.ndarray]:
        encodings = tokenizer.encode_batch([(query, doc) for doc in documents])
        arrays = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return {name: arrays[name] for name in names}

    return encode


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "n": len(samples),
        "mean_ms": round(1000 * statistics.fmean(samples), 1),
        "p50_ms": round(1000 * statistics.median(samples), 1),
        "p95_ms": round(1000 * p95, 1),
        "min_ms": round(1000 * ordered[0], 1),
    }


async def run(args: argparse.Namespace) -> dict:
    import onnxruntime as ort

    model_dir = args.model_repository / args.model
    manifest = json.loads((model_dir / "manifest.json").read_text())
    encode = make_encoder(model_dir, args.max_length or int(manifest["max_length"]))
    requests = [encode(query, docs) for query, docs in load_requests(args.data, args.queries, args.documents)]

    def session(file: str) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        return ort.InferenceSession(str(model_dir / file), options, providers=["CPUExecutionProvider"])

    local_paths = {"local ORT fp32": session(manifest["variants"]["fp32"]["file"])}
    if "int8" in manifest["variants"] and not args.no_int8:
        local_paths["local ORT int8"] = session(manifest["variants"]["int8"]["file"])

    server = None
    if args.triton_grpc_url and args.triton_http_url:
        grpc_url, http_url = args.triton_grpc_url, args.triton_http_url
    else:
        http_port, grpc_port, metrics_port = free_ports(3)
        log = Path(tempfile.gettempdir()) / f"triton-latency-{os.getpid()}.log"
        server = TritonServer(
            install(args.triton_root, quiet=True),
            args.model_repository,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            log_path=log,
        )
        server.start()
    try:
        if server is not None:
            server.wait_ready(180)
            grpc_url, http_url = server.grpc_url, server.http_url
        scorers = {
            "Triton gRPC": TritonScorer(grpc_url, "grpc", args.model, tuple(requests[0]), timeout_s=120),
            "Triton HTTP": TritonScorer(http_url, "http", args.model, tuple(requests[0]), timeout_s=120),
        }

        async def score(path: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
            if path in scorers:
                return (await scorers[path].score(EncodedBatch(inputs))).logits
            return local_paths[path].run(["logits"], inputs)[0].reshape(-1)

        paths = [*scorers, *local_paths]
        for inputs in requests[: args.warmup]:
            for path in paths:
                await score(path, inputs)
        samples: dict[str, list[float]] = {path: [] for path in paths}
        max_diff = {path: 0.0 for path in paths}
        for _ in range(args.repeats):
            for inputs in requests:
                produced = {}
                for path in paths:
                    started = time.perf_counter()
                    produced[path] = await score(path, inputs)
                    samples[path].append(time.perf_counter() - started)
                for path, logits in produced.items():
                    diff = float(np.abs(logits - produced["local ORT fp32"]).max())
                    max_diff[path] = max(max_diff[path], diff)
        for scorer in scorers.values():
            await scorer.close()
        shapes = sorted({tuple(next(iter(r.values())).shape) for r in requests})
        return {
            "paths": {path: _summary(values) for path, values in samples.items()},
            "max_abs_diff_vs_local_fp32": {p: d for p, d in max_diff.items() if p != "local ORT fp32"},
            "requests": len(requests),
            "repeats": args.repeats,
            "batch_shapes": [list(s) for s in shapes],
            "threads": args.threads,
            "machine": {
                "cpu_count": os.cpu_count(),
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "python": platform.python_version(),
                "onnxruntime": ort.__version__,
            },
            "triton": "local tritonserver 2.51 (nvidia-pytriton 0.7.0), python backend + ONNX Runtime CPU",
        }
    finally:
        if server is not None:
            server.stop()


def render(result: dict) -> str:
    lines = [
        "| path | requests | mean ms | p50 ms | p95 ms | min ms | max abs diff vs local fp32 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for path, s in result["paths"].items():
        diff = result["max_abs_diff_vs_local_fp32"].get(path)
        diff_text = "reference" if diff is None else f"{diff:.2e}"
        lines.append(
            f"| {path} | {s['n']} | {s['mean_ms']} | {s['p50_ms']} | {s['p95_ms']} | {s['min_ms']} | {diff_text} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.triton_latency", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default="reranker")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--queries", type=int, default=3, help="SciFact queries (one request each)")
    parser.add_argument("--documents", type=int, default=100, help="documents per request")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the queries")
    parser.add_argument("--warmup", type=int, default=1, help="requests per path before timing")
    parser.add_argument("--max-length", type=int, default=None, help="pair tokens (default: the model's)")
    parser.add_argument("--threads", type=int, default=0, help="local ORT intra-op threads (0: all cores)")
    parser.add_argument("--no-int8", action="store_true", help="skip the local int8 row")
    parser.add_argument("--triton-grpc-url", help="use a running server (with --triton-http-url)")
    parser.add_argument("--triton-http-url")
    parser.add_argument("--triton-root", type=Path, default=Path(".triton"))
    parser.add_argument("--output", type=Path, default=Path("bench/.work/triton_latency.json"))
    args = parser.parse_args(argv)

    result = asyncio.run(run(args))
    result["command"] = "python -m bench.triton_latency " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    print(
        f"\n{result['requests']} SciFact queries x {result['repeats']} passes, batch shapes {result['batch_shapes']}, "
        f"{result['machine']['cpu_count']} CPUs, load {result['machine']['load_avg_1m']}; written to {args.output}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
