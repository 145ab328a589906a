"""The concurrency sweep: closed-loop clients against the default serving configuration."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from bench.data import load_set
from bench.models import Models, gateway_env, lane_settings, two_stage_settings
from bench.service import Gateway, drive, rerank_body
from bench.settings import (
    WORK,
    Sizes,
    default_keep,
    log,
)


def sweep(models: Models, sizes: Sizes, data_root: Path, threads: int) -> dict[str, Any]:
    """Closed-loop clients against the default serving configuration (int8, two-stage), cache off."""
    scifact = load_set(data_root, "scifact")
    need = max(n for _, n in sizes.sweep)
    pool = scifact.candidates[: min(need, len(scifact.candidates))]
    bodies = [rerank_body(c.query, scifact.texts(c, sizes.speed_docs), None) for c in pool]
    two_stage = models.prefilter is not None
    env = gateway_env(
        models, cpu_precision="int8", cache_size=0, **lane_settings(threads), max_in_flight=256,
        **two_stage_settings(default_keep() if two_stage else None),
    )  # fmt: skip
    levels = []
    with Gateway(env, WORK / "logs" / "sweep.log") as gw:
        drive(gw.url, bodies[-1:], clients=1)  # warm-up
        for clients, n in sizes.sweep:
            res = drive(gw.url, [bodies[i % len(bodies)] for i in range(n)], clients=clients)
            lat = np.asarray([x for x in res.latencies_s if not math.isnan(x)], dtype=float)
            ok = int(lat.size)
            levels.append({
                "clients": clients, "requests": n, "ok": ok, "errors": res.errors, "wall_s": res.wall_s,
                "requests_per_s": ok / res.wall_s, "docs_per_s": ok * sizes.speed_docs / res.wall_s,
                "p50_s": float(np.percentile(lat, 50)) if ok else None,
                "p99_s": float(np.percentile(lat, 99)) if ok else None,
            })  # fmt: skip
            log(
                f"sweep {clients:>2} clients: {levels[-1]['docs_per_s']:.1f} docs/s p99 {levels[-1]['p99_s']}"
            )
        rss = gw.peak_rss_bytes()
    return {
        "config": f"http int8 two-stage keep {default_keep()}" if two_stage else "http int8 single-stage",
        "settings": {"max_in_flight": 256, "request_timeout_s": 900, "cache_size": 0},
        "levels": levels,
        "rss_peak_bytes": rss,
    }
