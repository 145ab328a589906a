"""How many parity pairs the gate scores for a model: the family's policy (gateway/families.py `GateSize`: fewer
queries for big models, so that a 0.6B decoder exports with its gate on 2 cores in minutes) applied to the
model's size, read from its safetensors headers."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from gateway.families import GateSize


def parity_queries(folder: Path, policy: GateSize) -> int:
    """The gate's number of queries for the model in `folder` (the policy's full set when its size cannot be
    read: no safetensors file)."""
    return policy.queries(non_embedding_parameters(folder))


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
