"""One in-process configuration, timed in a process of its own (`python -m bench.worker SPEC`).

A fresh process per configuration keeps their resident memory apart and stops one runtime's thread pool
(PyTorch, ONNX Runtime) from competing with another's. The parent gives every worker the same requests.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

Request = dict[str, Any]  # {"query": str, "documents": [str, ...]}
Ranker = Callable[[str, Sequence[str]], list[float]]  # one relevance score (sigmoid) per document


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _sentence_transformers(spec: dict[str, Any]) -> Ranker:
    """What a user would write: CrossEncoder(...).predict(pairs), library defaults (batch 32, unsorted)."""
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(int(spec["threads"]))
    model = CrossEncoder(spec["model_source"], max_length=int(spec["max_length"]), device="cpu")

    def rank(query: str, documents: Sequence[str]) -> list[float]:
        scores = model.predict([(query, d) for d in documents], activation_fn=torch.nn.Identity())
        return [_sigmoid(float(s)) for s in scores]

    return rank


def _flashrank(spec: dict[str, Any]) -> Ranker:
    """FlashRank given our ONNX file in a local cache folder (so it downloads nothing).

    Its model table only knows its own names; registering one more entry is the documented shape of that table.
    """
    import flashrank.Config
    from flashrank import Ranker as FlashRanker
    from flashrank import RerankRequest

    name = spec["flashrank_name"]
    flashrank.Config.model_file_map[name] = spec["onnx_file_name"]
    ranker = FlashRanker(
        model_name=name, cache_dir=spec["flashrank_cache"], max_length=int(spec["max_length"])
    )

    def rank(query: str, documents: Sequence[str]) -> list[float]:
        # FlashRank sorts and writes into the passages it is given: hand it fresh ones.
        passages = [{"id": i, "text": d} for i, d in enumerate(documents)]
        out = ranker.rerank(RerankRequest(query=query, passages=passages))
        scores = [0.0] * len(documents)
        for p in out:
            scores[p["id"]] = float(p["score"])
        return scores

    return rank


def _pipeline(spec: dict[str, Any]) -> Ranker:
    """Our pipeline without HTTP: the same Reranker the service builds from the same RERANKER_* settings."""
    os.environ.update(spec.get("env", {}))
    from gateway.app import build_reranker
    from gateway.config import load_settings
    from gateway.domain import RerankQuery

    reranker = build_reranker(load_settings())
    loop = asyncio.new_event_loop()
    loop.run_until_complete(reranker.load())

    def rank(query: str, documents: Sequence[str]) -> list[float]:
        outcome = loop.run_until_complete(
            reranker.rerank(RerankQuery(query=query, documents=tuple(documents)))
        )
        scores = [0.0] * len(documents)
        for r in outcome.results:
            scores[r.index] = float(r.relevance_score)
        return scores

    return rank


BUILDERS: dict[str, Callable[[dict[str, Any]], Ranker]] = {
    "sentence-transformers": _sentence_transformers,
    "flashrank": _flashrank,
    "pipeline": _pipeline,
}


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return int(psutil.Process().memory_info().rss)


def serve(spec: dict[str, Any]) -> None:
    """Load, then answer one JSON line per command on stdin: warmup, run <i>, stop.

    The parent interleaves the configurations request by request, so load from elsewhere on the machine
    hits them all alike; the latency is measured here, around the library call only.
    """
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library chatter (progress bars, prints) goes to the log, not into the protocol
    requests: list[Request] = json.loads(Path(spec["requests_file"]).read_text())
    warmup: list[Request] = json.loads(Path(spec["warmup_file"]).read_text())

    def reply(message: dict[str, Any]) -> None:
        protocol.write(json.dumps(message) + "\n")

    t0 = time.perf_counter()
    rank = BUILDERS[spec["kind"]](spec)
    reply(
        {
            "ready": True,
            "load_s": time.perf_counter() - t0,
            "rss_after_load_bytes": psutil.Process().memory_info().rss,
        }
    )
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "warmup":
            for r in warmup:
                rank(r["query"], r["documents"])
            reply({"ok": True})
        elif op == "run":
            r = requests[int(command["i"])]
            t = time.perf_counter()
            scores = rank(r["query"], r["documents"])
            reply({"latency_s": time.perf_counter() - t, "scores": scores})
        elif op == "stop":
            # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
            reply({"rss_peak_bytes": _peak_rss()})
            return


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    serve(json.loads(Path(args[0]).read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
