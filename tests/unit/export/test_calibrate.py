"""Calibrating the cascade's starting keep into manifest.json, and the gateway starting from it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from calibration_data import copy_repository

from export.__main__ import parse_args
from export.calibrate import KEEPS, calibrate, cpu_logits, read_calibration
from export.errors import ExportError
from gateway.app import build_reranker
from gateway.config import Settings
from gateway.domain import RerankQuery


def _calibration_file(path: Path, queries: int = 3, docs: int = 30) -> Path:
    words = ["berlin", "population", "trains", "spain", "museum", "art", "river", "city", "people", "live"]
    lines = []
    for q in range(queries):
        documents = [
            " ".join(words[(q + d * k) % len(words)] for k in range(1, 2 + d % 7)) for d in range(docs)
        ]
        lines.append(json.dumps({"query": f"{words[q]} {words[q + 1]}", "documents": documents}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_calibration_writes_the_smallest_keep_meeting_the_target(tiny_model_repository, tmp_path):
    repo = copy_repository(tiny_model_repository, tmp_path / "repo")
    entry = calibrate(repo, _calibration_file(tmp_path / "cal.jsonl"), target=0.95, rule="prefilter")
    manifest = json.loads((repo / "reranker" / "manifest.json").read_text())
    assert manifest["cascade"] == entry and entry["queries"] == 3
    by_keep = {int(k): v for k, v in entry["recall_at_10_by_keep"].items()}
    assert by_keep[max(KEEPS)] == 1.0  # every document kept: the single-stage ranking itself
    assert by_keep[entry["keep"]] >= 0.95
    assert all(v < 0.95 for k, v in by_keep.items() if k < entry["keep"])

    async def started_keep(**overrides) -> int:
        reranker = build_reranker(Settings(model_repository=repo, threads=1, **overrides))
        try:
            await reranker.load()
            return reranker.cascade.adaptive_keep.keep
        finally:
            await reranker.close()

    assert asyncio.run(started_keep()) == entry["keep"]
    assert asyncio.run(started_keep(keep=33)) == 33  # RERANKER_KEEP, when set, wins


@pytest.mark.parametrize(("name", "max_length"), [("reranker", None), ("prefilter", 80)])
def test_calibration_scores_what_the_gateway_serves_on_the_cpu(
    tiny_model_repository, tmp_path, name, max_length
):
    """The build step scores without the gateway's runtime; its logits are the ones the gateway returns."""
    items = read_calibration(_calibration_file(tmp_path / "cal.jsonl", queries=2, docs=12))
    items[0]["documents"][3] = " ".join(["museum art river"] * 40)  # longer than an 80-token window
    ours = cpu_logits(tiny_model_repository, name, items, max_length)

    async def served() -> list[list[float]]:
        reranker = build_reranker(
            Settings(
                model_repository=tiny_model_repository,
                model_name=name,
                prefilter_name="",
                device="cpu",
                max_length=max_length,
                cache_size=0,
                threads=1,
            )
        )
        try:
            out = []
            for item in items:
                res = await reranker.rerank(RerankQuery(item["query"], tuple(item["documents"]), keep=0))
                by_index = {r.index: r.logit for r in res.results}
                out.append([by_index[i] for i in range(len(item["documents"]))])
            return out
        finally:
            await reranker.close()

    theirs = asyncio.run(served())
    assert len(set(np.round(theirs[0], 4))) > 1, (
        "distinct documents score differently (or this tests nothing)"
    )
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)


def test_a_bad_calibration_file_names_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "documents": ["a"]}\n{"query": "q"}\n')
    with pytest.raises(ExportError, match=r"bad.jsonl:2"):
        read_calibration(bad)


def test_cli_takes_a_calibration_file():
    args = parse_args(["--calibration", "cal.jsonl", "--calibration-target", "0.8"])
    assert args.calibration == Path("cal.jsonl") and args.calibration_target == 0.8
