"""`python -m bench --size smoke` end to end on a tiny model and a tiny BEIR-shaped data set, so the benchmark
harness cannot rot: every section (quality through HTTP, each speed configuration, the concurrency sweep, the
report with its plots) must run and write what the committed report is made of.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.slow

# Four documents per query, two judged relevant; the "relevant" ones share words with the query so BM25-style
# candidates look real, though a random tiny model ranks them arbitrarily.
DOCS = {
    f"d{i}": {"_id": f"d{i}", "title": f"Title {i}", "text": f"document number {i} about topic {i % 3}"}
    for i in range(12)
}
QUERIES = {"q1": "topic 0 documents", "q2": "topic 1 documents", "q3": "topic 2 documents"}


def _write_set(root: Path, name: str) -> None:
    folder = root / name
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as fh:
        for d in DOCS.values():
            fh.write(json.dumps({**d, "metadata": {}}) + "\n")
    with open(folder / "queries.jsonl", "w") as fh:
        for qid, text in QUERIES.items():
            fh.write(json.dumps({"_id": qid, "text": text, "metadata": {}}) + "\n")
    with open(folder / "qrels" / "test.tsv", "w", newline="") as fh:
        fh.write("query-id\tcorpus-id\tscore\r\n")
        for k, qid in enumerate(QUERIES):
            for i in range(12):
                if i % 3 == k:
                    fh.write(f"{qid}\td{i}\t1\r\n")
    with open(folder / "bm25_top100.jsonl", "w") as fh:
        for k, qid in enumerate(QUERIES):
            ids = [f"d{(i + k) % 12}" for i in range(12)]
            fh.write(
                json.dumps({"query_id": qid, "doc_ids": ids, "scores": [12.0 - i for i in range(12)]}) + "\n"
            )


@pytest.fixture()
def tiny_beir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for name in ("scifact", "nfcorpus"):
        _write_set(root, name)
    return root


def _run_bench(repository: Path, data: Path, output: Path, *extra: str) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "bench", "--size", "smoke", "--model-repository", str(repository)]
    command += ["--data", str(data), "--output", str(output), *extra]
    proc = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((output / "results.json").read_text())


def test_every_benchmark_runs_on_a_tiny_input(
    tiny_model_repository: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    results = _run_bench(
        tiny_model_repository,
        tiny_beir,
        out,
        "--quality-configs",
        "fp32,int8",
        "--speed-configs",
        "sentence-transformers,flashrank-fp32,flashrank-int8,pipeline-fp32,pipeline-int8,"
        "http-fp32,http-int8,http-int8-one-batch,http-int8-keep-denormals,http-two-stage",
    )

    quality = {(r["config"], r["set"]): r for r in results["quality"]["rows"]}
    for config in ("bm25", "fp32 single-stage", "int8 single-stage", "fp32 two-stage keep 3"):
        for set_name in ("scifact", "nfcorpus"):
            row = quality[(config, set_name)]
            assert 0.0 <= row["ndcg@10"] <= 1.0 and 0.0 <= row["recall@10"] <= 1.0
    # Reranking only reorders: Recall@10 over all 8 candidates is the same whatever the order.
    assert quality[("fp32 single-stage", "scifact")]["recall@10"] == pytest.approx(
        quality[("bm25", "scifact")]["recall@10"]
    )

    speed = {r["config"]: r for r in results["speed"]["rows"]}
    assert not results["speed"]["failures"]
    for name in ("sentence-transformers", "flashrank-fp32", "pipeline-int8", "http-fp32", "http-two-stage"):
        row = speed[name]
        assert row["requests"] == 2 and row["docs_per_s"] > 0 and row["p99_s"] >= row["p50_s"] > 0
        assert row["rss_peak_bytes"] > 0
    # Same weights everywhere: the fp32 paths score what PyTorch scores.
    for name in ("flashrank-fp32", "pipeline-fp32", "http-fp32"):
        assert speed[name]["max_abs_score_diff_vs_st"] < 1e-3, name
    assert speed["sentence-transformers"]["throughput_x_st"] == pytest.approx(1.0)
    # two batches at once or one at a time: an int8 pair's score is the same (each pair is its own batch)
    one_batch = speed["http-int8-one-batch"]
    assert one_batch["requests"] == 2 and one_batch["docs_per_s"] > 0
    assert one_batch["max_abs_score_diff_vs_st"] == speed["http-int8"]["max_abs_score_diff_vs_st"]
    # denormals flushed to zero or kept: the same scores
    kept = speed["http-int8-keep-denormals"]
    assert kept["requests"] == 2 and kept["first_scores"] == speed["http-int8"]["first_scores"]

    levels = results["sweep"]["levels"]
    assert [lv["clients"] for lv in levels] == [1, 2] and all(lv["ok"] == lv["requests"] for lv in levels)

    # several models in one gateway (the two tiny models for seconds): both served, every small answer 200
    assert results["mixed"]["checks"]["every_small_answer_200"] is True
    assert "`/metrics` at the end" in (out / "mixed.md").read_text()

    report = (out / "report.md").read_text()
    assert "the throughput of one at a time (http-int8 vs http-int8-one-batch)" in report
    assert "the throughput of keeping them (http-int8 vs http-int8-keep-denormals)" in report
    for heading in (
        "## Ranking quality",
        "## Speed, side by side",
        "## Concurrency sweep",
        "## Machine and versions",
    ):
        assert heading in report
    assert (out / "quality_vs_speed.png").stat().st_size > 0
    assert (out / "latency_vs_concurrency.png").stat().st_size > 0


@pytest.mark.triton
def test_the_triton_path_runs_on_a_tiny_input(
    tiny_model_repository: Path, tiny_beir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    results = _run_bench(
        tiny_model_repository,
        tiny_beir,
        out,
        "--sections",
        "quality,speed",
        "--quality-configs",
        "fp32,triton",
        "--speed-configs",
        "sentence-transformers,http-triton",
    )
    triton_rows = [r for r in results["quality"]["rows"] if r["config"] == "triton fp32 single-stage"]
    assert len(triton_rows) == 1 and "error" not in triton_rows[0], triton_rows
    row = triton_rows[0]
    # Triton really scored (not the gateway's local fallback), and scored what local ONNX Runtime scores.
    assert row["triton_calls_ok"] > 0 and row["fallbacks"] == 0
    assert row["max_abs_score_diff_vs_local_fp32"] < 1e-4
    speed = {r["config"]: r for r in results["speed"]["rows"]}
    assert not results["speed"]["failures"]
    assert speed["http-triton"]["requests"] == 2 and speed["http-triton"]["max_abs_score_diff_vs_st"] < 1e-3
    assert "## Speed, side by side" in (out / "report.md").read_text()
