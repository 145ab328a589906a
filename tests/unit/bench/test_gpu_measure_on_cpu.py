"""bench.gpu_measure end to end on the CPU, so its code cannot rot between the rare GPU runs.

With `REQUIRE_CUDA` on (as `make gpu-check` runs it) every section refuses to report CPU figures under a GPU
heading; with it off (only here) the "CUDA" sessions silently run on the CPU, as onnxruntime-gpu does without
CUDA, and every section runs through to the JSON that the report writer renders.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_test_data import tiny_scifact

import bench.gpu_measure as gm
from bench.gpu_check import preflight, write_markdown


@pytest.fixture
def cpu_measure(monkeypatch: pytest.MonkeyPatch, tiny_model_repository: Path, tmp_path: Path):
    monkeypatch.setattr(gm, "nvml_info", lambda: {"gpu": "none", "driver": "-", "used_mb": 0, "total_mb": 0})
    monkeypatch.setattr(gm, "used_mb", lambda: 0)
    monkeypatch.setattr(gm, "BARE_BATCHES", (2,))
    monkeypatch.setattr(gm, "BARE_SECONDS", 0.05)
    monkeypatch.setattr(gm, "GPU_BUDGETS", (512,))
    data = tiny_scifact(tmp_path / "data")
    out = tmp_path / "gpu.json"

    def measure() -> dict:
        argv = ["--model-repository", str(tiny_model_repository), "--data", str(data), "--out", str(out)]
        assert gm.main([*argv, "--requests", "1", "--parity-queries", "1", "--warmup", "1"]) == 0
        return json.loads(out.read_text())

    return monkeypatch, measure


@pytest.mark.skipif(preflight().ok, reason="this machine has CUDA: the sections would succeed")
def test_with_cuda_required_no_section_reports_cpu_figures(cpu_measure) -> None:
    _, measure = cpu_measure
    results = measure()
    assert set(results["errors"]) == {"provider", "parity", "oom", "bare_512", "padding"}
    assert all("CUDA" in text or "GPU" in text for text in results["errors"].values())
    rows = results["speed"]["contenders"]
    assert rows and all("error" in row for row in rows.values())
    assert "parity" not in results and "padding" not in results
    assert "## Sections that failed" in write_markdown(results)


def test_every_section_runs_through_when_cuda_is_not_required(cpu_measure) -> None:
    monkeypatch, measure = cpu_measure
    monkeypatch.setattr(gm, "REQUIRE_CUDA", False)
    results = measure()
    assert not results.get("errors"), results.get("errors")
    assert results["parity"]["queries"] == 1 and results["parity"]["ties_fp32_sigmoid"] == 0
    assert results["parity"]["top1_agreement"] == 1.0
    assert results["oom"]["status"] == 200 and results["oom"]["failed_requests"] == 0
    speed = results["speed"]["contenders"]
    for name in ("onnx-cuda fp16 (gateway pipeline)", "onnx-cuda fp32 (gateway pipeline)"):
        assert speed[name]["pairs_per_s"] > 0 and speed[name]["p99_ms"] >= speed[name]["p50_ms"]
    assert results["padding"]["strategies"]["unpadded"]["batches"] == 8
    assert results["bare_512"]["contenders"]["onnx-cuda fp16"]["batch"] == 2
    text = write_markdown(results)
    assert "## fp16 vs fp32" in text and "## Padded vs unpadded on the GPU" in text
