"""`python -m bench`: quality and speed of every configuration in one run, then the report.

Quality goes through the running HTTP service (the same path users hit). Speed measures every alternative on
the same weights and the same 100-document requests in one run, and reports ratios to sentence-transformers
measured minutes apart, because absolute figures on a shared 2-core machine mean little."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench.flops import measure_fp32_peak
from bench.models import resolve_models
from bench.quality import quality
from bench.settings import (
    QUALITY_CONFIGS,
    REPO_ROOT,
    SIZES,
    SPEED_CONFIGS,
    log,
)
from bench.speed import speed
from bench.sweep import sweep


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    with contextlib.suppress(OSError):
        cpuinfo = Path("/proc/cpuinfo").read_text()
        for line in cpuinfo.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                info["simd"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
                break
    with contextlib.suppress(ImportError):
        import psutil

        info["memory_bytes"] = psutil.virtual_memory().total
    from importlib import metadata

    versions = {}
    for dist in ("torch", "onnxruntime-gpu", "onnxruntime", "transformers", "sentence-transformers", "flashrank",
                 "tokenizers", "numpy", "fastapi", "uvicorn", "tritonclient", "pytrec-eval-terrier"):  # fmt: skip
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    info["versions"] = versions
    with contextlib.suppress(Exception):
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    return info


@contextlib.contextmanager
def timed(results: dict[str, Any], key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    results.setdefault("section_seconds", {})[key] = time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default=None, help="export source the repository must come from (hub id or folder)"
    )
    parser.add_argument(
        "--prefilter", default=None, help="export source of the prefilter (default: the repository's)"
    )
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument(
        "--sections", default="quality,speed,sweep,padding,families,mixed", help="comma-separated subset"
    )
    parser.add_argument("--speed-configs", default=",".join(SPEED_CONFIGS))
    parser.add_argument("--quality-configs", default=",".join(QUALITY_CONFIGS))
    parser.add_argument("--speed-requests", type=int, default=None, help="override the size's timed requests")
    parser.add_argument(
        "--quality-sets", default=None, help="override the size's quality sets, e.g. scifact:100,nfcorpus:50"
    )
    parser.add_argument(
        "--triton-queries", type=int, default=None, help="override the size's Triton quality queries"
    )
    parser.add_argument(
        "--cached-only",
        action="store_true",
        help="quality from the --resume store only (no fp32/int8 server): rows cover the leading queries done",
    )
    parser.add_argument(
        "--sweep-levels",
        default=None,
        help="override the size's sweep, e.g. 1:8,8:16,32:64 (clients:requests)",
    )
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep each quality ranking under bench/.work/quality-cache and reuse it: an interrupted run "
        "continues where it stopped (keyed by the exported files and the precision)",
    )
    parser.add_argument(
        "--keep-other-sections",
        action="store_true",
        help="take the sections this run skips from the output's existing results.json (quality figures do not "
        "depend on the machine's load, so they can be measured apart from the timed sections)",
    )
    args = parser.parse_args(argv)

    sizes = SIZES[args.size]
    if args.speed_requests is not None:
        sizes = replace(sizes, speed_requests=args.speed_requests)
    if args.quality_sets:
        chosen = tuple((name, int(n)) for name, n in (x.split(":") for x in args.quality_sets.split(",")))
        sizes = replace(sizes, quality_sets=chosen)
    if args.triton_queries is not None:
        sizes = replace(sizes, triton_quality_queries=args.triton_queries)
    if args.sweep_levels:
        levels = tuple(tuple(int(x) for x in level.split(":")) for level in args.sweep_levels.split(","))
        sizes = replace(sizes, sweep=levels)  # type: ignore[arg-type]
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    models = resolve_models(args.model_repository, args.model, args.prefilter)
    log(f"repository {models.repository} (model {models.source()}), size {args.size}")
    started = dt.datetime.now(dt.timezone.utc)
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "size": args.size,
        "sizes": asdict(sizes),
        "machine": machine(),
        "loadavg_start": os.getloadavg(),
        "threads": args.threads,
        "model": {
            "source": models.reranker.get("source"),
            "model_id": models.reranker.get("model_id"),
            "prefilter": (models.prefilter or {}).get("source"),
            "standin": models.is_standin(),
        },
    }
    results["peak_start"] = measure_fp32_peak(args.threads, n=sizes.peak_n)
    log(f"fp32 peak {results['peak_start']['flops_per_s'] / 1e9:.0f} GFLOP/s")
    if "quality" in sections:
        with timed(results, "quality"):
            results["quality"] = quality(
                models, sizes, args.data, args.quality_configs.split(","), resume=args.resume,
                cached_only=args.cached_only,
            )  # fmt: skip
    if "speed" in sections:
        with timed(results, "speed"):
            results["speed"] = speed(models, sizes, args.data, args.speed_configs.split(","), args.threads)
    if "sweep" in sections:
        with timed(results, "sweep"):
            try:
                results["sweep"] = sweep(models, sizes, args.data, args.threads)
            except Exception as exc:
                log(f"sweep FAILED: {exc}")
                results["sweep"] = {"error": f"{type(exc).__name__}: {exc}"}
    if "padding" in sections:
        # padded vs unpadded batches and the pipeline's phase shares: bench/results/padding.{json,md}
        from bench.padding import PADDING_SIZES
        from bench.padding import run as run_padding

        queries, docs, phase_queries = PADDING_SIZES[args.size]
        with timed(results, "padding"):
            results["padding"] = run_padding(
                models.repository, args.data, args.output, queries=queries, docs=docs,
                phase_queries=phase_queries, threads=args.threads, command=results["command"],
                model_name=models.reranker["name"],
            )  # fmt: skip
    if "families" in sections:
        # speed and memory per model family (ModernBERT-base-sized, Qwen3-0.6B-sized): bench/results/families.*
        from bench.families import run as run_families

        with timed(results, "families"):
            # --size smoke (the test suite's run) uses the tiny test models: the real sizes take minutes and
            # a 0.6B export peaks near 15 GB.
            smoke = args.size == "smoke"
            families = run_families(
                args.output, args.data, size=args.size, threads=args.threads, command=results["command"],
                **({"tiny": True, "work": args.output / "families-work"} if smoke else {}),
            )  # fmt: skip
            results["families"] = {"report": "families.md", "seconds": families["seconds"]}
    if "mixed" in sections:
        # several models in one gateway under load (a small model beside a flooded decoder):
        # bench/results/mixed.{json,md}
        from bench.mixed import run as run_mixed

        with timed(results, "mixed"):
            # --size smoke (the test suite's run) serves the repository's own two tiny models for seconds; the
            # real run exports the MiniLM stand-in and an 8-layer Qwen3-layout decoder into bench/.work/mixed.
            smoke = args.size == "smoke" and models.prefilter is not None
            mixed = run_mixed(
                args.output, args.data, size=args.size, command=results["command"],
                **({"repository": models.repository,
                    "names": (models.reranker["name"], models.prefilter["name"])} if smoke else {}),  # type: ignore[index]
            )  # fmt: skip
            results["mixed"] = {"report": "mixed.md", "checks": mixed["checks"], "seconds": mixed["seconds"]}
    results["peak_end"] = measure_fp32_peak(args.threads, n=sizes.peak_n)
    results["loadavg_end"] = os.getloadavg()
    results["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    results["seconds"] = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()

    from bench.report import write_report

    previous_path = args.output / "results.json"
    if args.keep_other_sections and previous_path.exists():
        previous = json.loads(previous_path.read_text())
        for section in ("quality", "speed", "sweep"):
            if section not in sections and section in previous:
                results[section] = previous[section]
                if section == "speed":
                    # % of peak compares with the peak measured in the run that timed the speed section.
                    results["speed_peaks"] = [previous.get("peak_start"), previous.get("peak_end")]
                results.setdefault("sections_from_earlier_run", {})[section] = (
                    f"run started {previous.get('started')}: `{previous.get('command', '?')}`"
                )
                if section in previous.get("section_seconds", {}):
                    results.setdefault("section_seconds", {})[section] = previous["section_seconds"][section]
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(results, indent=1, default=str))
    write_report(results, args.output, plots=not args.no_plots)
    log(f"report written to {args.output / 'report.md'} ({results['seconds'] / 60:.1f} min)")
    return 0
