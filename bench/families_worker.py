"""The per-family contenders of bench/families.py, each in a process of its own.

`python -m bench.families_worker serve SPEC`: bench.worker's request-by-request protocol, with one more kind,
`st-template`: sentence-transformers `CrossEncoder` on a decoder reranker folder (its causal-LM path: a
`Transformer(text-generation)` module and `LogitScore(yes, no)`, i.e. logit(yes) - logit(no) at the last
token), given the reranker's prompt as the pair text. The folder has no chat template, so CrossEncoder
tokenizes the pair as two plain texts; we cut the document in tokens first, so that its own truncation never
cuts the template's suffix (the bug the issue names) and both contenders score the same tokens.

`python -m bench.families_worker rss SPEC`: load sentence-transformers models, score one request per model,
print the peak resident set (VmHWM) as one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from bench import worker

Ranker = worker.Ranker


def st_template_ranker(folder: str, max_length: int, threads: int, template: dict[str, Any]) -> Ranker:
    """CrossEncoder(folder) on a decoder reranker; pairs built from the exported manifest's `template`."""
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(threads)
    model = CrossEncoder(folder, max_length=max_length, device="cpu", local_files_only=True)
    tokenizer = model.tokenizer
    query_format = template["query"]
    instruction = template.get("default_instruction") or ""

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    suffix_tokens = count(template["suffix"])

    def pair(query: str, document: str) -> tuple[str, str]:
        head = template["prefix"] + query_format.format(instruction=instruction, query=query)
        budget = max(0, max_length - count(head) - suffix_tokens)
        ids = tokenizer(template["document"].format(document=document), add_special_tokens=False)["input_ids"]
        return head, tokenizer.decode(ids[:budget]) + template["suffix"]

    def rank(query: str, documents: Sequence[str]) -> list[float]:
        pairs = [pair(query, d) for d in documents]
        scores = model.predict(pairs, activation_fn=torch.nn.Identity())
        return [worker._sigmoid(float(s)) for s in scores]

    return rank


def _st_template(spec: dict[str, Any]) -> Ranker:
    return st_template_ranker(
        spec["model_source"], int(spec["max_length"]), int(spec["threads"]), spec["template"]
    )


def st_ranker(
    kind: str, folder: str, max_length: int, threads: int, template: dict[str, Any] | None = None
) -> Ranker:
    if kind == "st-template":
        assert template is not None
        return st_template_ranker(folder, max_length, threads, template)
    return worker._sentence_transformers(
        {"model_source": folder, "max_length": max_length, "threads": threads}
    )


def rss(spec: dict[str, Any]) -> dict[str, Any]:
    """Load every model of spec["models"] ({kind, folder, request}), then score each one's request."""
    t0 = time.perf_counter()
    rankers = [
        (
            m,
            st_ranker(
                m["kind"], m["folder"], int(spec["max_length"]), int(spec["threads"]), m.get("template")
            ),
        )
        for m in spec["models"]
    ]
    load_s = time.perf_counter() - t0
    rss_after_load = psutil.Process().memory_info().rss
    for m, rank in rankers:
        rank(m["request"]["query"], m["request"]["documents"])
    return {"rss_peak_bytes": worker._peak_rss(), "rss_after_load_bytes": rss_after_load, "load_s": load_s}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    mode, spec = args[0], json.loads(Path(args[1]).read_text())
    if mode == "serve":
        worker.BUILDERS["st-template"] = _st_template
        worker.serve(spec)
        return 0
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library chatter goes to the log
    protocol.write(json.dumps(rss(spec)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
