"""How many parity pairs the gate scores: fewer for big models, so that a 0.6B decoder exports with its gate
on 2 cores in minutes (issue 22: at most 15 minutes, peak RSS at most 3x its fp32 file).

The gate's cost is parameters x tokens x passes (PyTorch, fp32, fused fp32, int8, fp16). Up to
FULL_GATE_PARAMS non-embedding parameters (MiniLM, BERT-base-sized rerankers) it scores the whole set of 40
queries x 4 documents; above, the number of queries falls in proportion, never under MIN_QUERIES (24 pairs:
6 of them long and cut at the max length, 6 queries for the same-best-document check). A Qwen3-0.6B-sized
decoder (440 M non-embedding parameters) gets 6 queries.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

FULL_QUERIES = 40
MIN_QUERIES = 6
FULL_GATE_PARAMS = 70_000_000


def parity_queries(folder: Path, full: int = FULL_QUERIES) -> int:
    """The gate's number of queries for the model in `folder` (full when its size cannot be read)."""
    params = non_embedding_parameters(folder)
    if params <= FULL_GATE_PARAMS:
        return full
    return max(MIN_QUERIES, min(full, full * FULL_GATE_PARAMS // params))


def non_embedding_parameters(folder: Path) -> int:
    """Parameters in the folder's safetensors files, less the embedding matrices (a lookup costs nothing)."""
    total = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        with open(path, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        for name, entry in header.items():
            if name == "__metadata__" or ("embed" in name and "norm" not in name):
                continue
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
            total += count
    return total
