"""Arithmetic of a BERT-style cross-encoder and the machine's fp32 peak, so speed can be read as a fraction."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EncoderShape:
    layers: int
    hidden: int
    intermediate: int

    @classmethod
    def from_config(cls, config_json: Path) -> EncoderShape:
        cfg = json.loads(config_json.read_text())
        return cls(
            layers=int(cfg["num_hidden_layers"]),
            hidden=int(cfg["hidden_size"]),
            intermediate=int(cfg["intermediate_size"]),
        )

    def pair_flops(self, tokens: int) -> float:
        """Multiply-adds x2 of one unpadded pair of `tokens` tokens.

        Per layer: Q, K, V and output projections 4 x 2*S*H^2, the two FFN matrices 2 x 2*S*H*F, attention
        scores and the weighted sum 2 x 2*S^2*H. Embeddings, layer norms, softmax, pooler and classifier are
        under 1% and left out. Padding is not counted: it is work the runtime did for nothing.
        """
        s, h, f = tokens, self.hidden, self.intermediate
        per_layer = 8 * s * h * h + 4 * s * h * f + 4 * s * s * h
        return float(self.layers * per_layer)


def measure_fp32_peak(threads: int, n: int = 4096, repeats: int = 5) -> dict[str, float]:
    """Best-of-`repeats` FLOP/s of an n x n fp32 matrix product (torch, MKL/oneDNN), the machine's usable peak."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.rand(n, n, dtype=torch.float32)
        b = torch.rand(n, n, dtype=torch.float32)
        torch.mm(a, b)  # warm-up: page in, pick the kernel
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(previous)
    return {"flops_per_s": 2.0 * n**3 / best, "n": float(n), "threads": float(threads), "seconds": best}
