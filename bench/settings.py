"""What a benchmark run measures and where it works: sizes, configuration names, paths, the log line."""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


WORK = REPO_ROOT / "bench" / ".work"

# The gateway's default Triton timeout (10 s) is sized for a GPU; a 32-row batch of 512-token pairs on two
# shared CPU cores takes longer, and the fallback would then quietly serve every batch locally.
TRITON_TIMEOUT_S = 600


def default_keep() -> int:
    """The shipped default number of prefilter survivors (gateway/config.py), so "two-stage" means the default."""
    from gateway.config import Settings

    return int(Settings.model_fields["keep"].default)


@dataclass(frozen=True)
class Sizes:
    """How much of everything a run measures. `full` is what the committed report uses."""

    quality_sets: tuple[tuple[str, int], ...]  # (set, first N queries)
    depth: int | None  # candidates per query (None: all 100)
    keeps: tuple[int, ...]  # two-stage keep values for the quality table
    triton_quality_queries: int  # first N SciFact queries through the Triton path
    speed_requests: int  # timed requests per configuration
    speed_docs: int  # documents per request
    sweep: tuple[tuple[int, int], ...]  # (clients, requests) for the concurrency sweep
    peak_n: int = 4096  # side of the matrix product that measures the fp32 peak


SIZES = {
    "full": Sizes(
        quality_sets=(("scifact", 100), ("nfcorpus", 50)),
        depth=None,
        keeps=(10, 20, 30, 50),
        triton_quality_queries=10,
        speed_requests=10,
        speed_docs=100,
        sweep=((1, 8), (8, 16), (32, 64)),
    ),
    "quick": Sizes(
        quality_sets=(("scifact", 20), ("nfcorpus", 10)),
        depth=None,
        keeps=(20, 50),
        triton_quality_queries=3,
        speed_requests=4,
        speed_docs=100,
        sweep=((1, 4), (8, 8), (32, 32)),
    ),
    "smoke": Sizes(
        quality_sets=(("scifact", 2), ("nfcorpus", 1)),
        depth=8,
        keeps=(3,),
        triton_quality_queries=1,
        speed_requests=2,
        speed_docs=8,
        sweep=((1, 2), (2, 2)),
        peak_n=1024,
    ),
}


SPEED_CONFIGS = (
    "sentence-transformers",
    "flashrank-fp32",
    "flashrank-int8",
    "pipeline-fp32",
    "pipeline-int8",
    "http-fp32",
    "http-int8",
    "http-int8-one-batch",
    "http-int8-keep-denormals",
    "http-two-stage",
    "http-two-stage-keep-denormals",
    "http-triton",
)


QUALITY_CONFIGS = ("fp32", "int8", "triton")


def log(message: str) -> None:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%H:%M:%S")
    print(f"[bench {stamp}] {message}", file=sys.stderr, flush=True)
