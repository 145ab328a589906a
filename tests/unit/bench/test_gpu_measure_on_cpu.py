"""bench.gpu_measure end to end on the CPU, so its code cannot rot between the rare GPU runs.

With `REQUIRE_CUDA` on (as `make gpu-check` runs it) every section refuses to report CPU figures under a GPU
heading; with it off (only here) the "CUDA" sessions silently run on the CPU, as onnxruntime-gpu does without
CUDA, and every section runs through to the JSON that the report writer renders.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import pytest
from bench_test_data import tiny_scifact

import bench.gpu_measure as gm
from bench.gpu_check import preflight, write_markdown


@pytest.fixture
def cpu_measure(monkeypatch: pytest.MonkeyPatch, tiny_model_repository: Path, tmp_path: Path):
    monkeypatch.setattr(gm, "nvml_info", lambda: {"gpu": "none", "driver": "-", "used_mb": 0, "total_mb": 0})
    monkeypatch.setattr(gm, "BARE_BATCHES", (2,))
    monkeypatch.setattr(gm, "BARE_SECONDS", 0.05)
    monkeypatch.setattr(gm, "GPU_BUDGETS", (512,))
    data = tiny_scifact(tmp_path / "data")
    out = tmp_path / "gpu.json"

    def measure(*extra: str) -> dict:
        argv = ["--model-repository", str(tiny_model_repository), "--data", str(data), "--out", str(out)]
        assert gm.main([*argv, "--requests", "1", "--parity-queries", "1", "--warmup", "1", *extra]) == 0
        return json.loads(out.read_text())

    return monkeypatch, measure


@pytest.mark.skipif(preflight().ok, reason="this machine has CUDA: the sections would succeed")
def test_with_cuda_required_no_section_reports_cpu_figures(cpu_measure) -> None:
    _, measure = cpu_measure
    results = measure()
    every = {"provider", "placement", "parity", "baseline", "oom", "bare", "padding", "speed", "memory"}
    assert set(results["errors"]) == every
    for section, text in results["errors"].items():
        assert "CUDA" in text or "GPU" in text or "NVML" in text, (section, text)
    rows = results["speed"]["contenders"]
    assert rows and all("error" in row for row in rows.values())
    assert all("error" in row for row in results["memory"]["contenders"].values())
    assert "parity" not in results and "padding" not in results and "placement" not in results
    assert results["complete"] is True
    assert "## Sections that failed" in write_markdown(results)


def test_every_section_runs_through_when_cuda_is_not_required(cpu_measure, tmp_path: Path) -> None:
    monkeypatch, measure = cpu_measure
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    results = measure("--no-require-cuda")
    # the bare section's other fp16 file lived in a temporary folder, gone once the section ended
    assert not list(scratch.glob("other-fp16-*"))
    assert not results.get("errors"), results.get("errors")
    assert results["complete"] is True and results["versions"]["onnxruntime-gpu"]
    assert results["parity"]["queries"] == 1 and results["parity"]["ties_fp32_sigmoid"] == 0
    assert results["parity"]["top1_agreement"] == 1.0 and results["parity"]["gate"]["passed"] is True
    assert results["parity"]["gate"]["bounds"]["fp16_max_abs_diff"] == 0.05  # the manifest's, as exported
    # on the CPU every node runs on the CPU provider: the count finds them (on the GPU it must find none)
    for variant in ("fp16", "fp32"):
        placed = results["placement"][variant]
        assert placed["by_provider"] == {"CPUExecutionProvider": placed["nodes"]}
        assert placed["cpu_compute_nodes"] > 0 and "MatMul" in placed["cpu_compute_ops"]
    baseline = results["baseline"]
    assert baseline["gate"]["passed"] and baseline["pairs"] == 8
    assert baseline["st_fp32_vs_onnx_fp32"]["max_abs_diff"] < 1e-4  # the same function, not just close
    assert results["oom"]["status"] == 200 and results["oom"]["failed_requests"] == 0
    speed = results["speed"]["contenders"]
    for name in (gm.FP16_PIPELINE, gm.FP32_PIPELINE, gm.TORCH_FP16):
        assert speed[name]["pairs_per_s"] > 0 and speed[name]["p99_ms"] >= speed[name]["p50_ms"]
    assert results["padding"]["strategies"]["unpadded"]["batches"] == 8
    for tokens in ("128", "512"):
        assert results["bare"]["tokens"][tokens]["onnx-cuda fp16"]["batch"] == 2
        # the exported fp16 file is unfused (the default); the one fused for CUDA is timed beside it
        assert results["bare"]["tokens"][tokens][f"onnx-cuda {gm.FUSED_FP16}"]["pairs_per_s"] > 0
    memory = results["memory"]["contenders"]
    assert set(memory) == {gm.FP16_PIPELINE, gm.FP32_PIPELINE, gm.TORCH_FP16}
    assert all("error" not in row for row in memory.values()), memory
    text = write_markdown(results)
    assert (
        "## fp16 vs fp32" in text
        and "## Padded vs unpadded on the GPU" in text
        and "## Node placement" in text
    )


def test_the_json_is_written_after_every_section(cpu_measure, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run cut short (the 10-minute limit of a GPU call) still leaves every section it finished."""
    seen: list[set[str]] = []
    real_save = gm.Run.save

    def save(self: gm.Run) -> None:
        real_save(self)
        seen.append(set(json.loads(self.out.read_text())))
        assert self.out.with_suffix(".md").is_file()

    monkeypatch.setattr(gm.Run, "save", save)

    def boom(*_: object) -> None:
        raise RuntimeError("the machine went away")

    monkeypatch.setattr(gm, "section_speed", boom)
    monkeypatch.setattr(gm, "section_memory", boom)
    _, measure = cpu_measure
    results = measure("--no-require-cuda")
    assert "placement" in seen[2] and "parity" not in seen[2]  # header, provider, placement, ...
    assert any("parity" in keys and "oom" not in keys for keys in seen)
    assert set(results["errors"]) == {"speed", "memory"}


def test_a_missing_fp32_file_is_refused_not_replaced(tiny_model_repository: Path, tmp_path: Path) -> None:
    """The fp32 contender never runs the fp16 file under the fp32 name."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(tiny_model_repository / "reranker", repo / "reranker")
    (repo / "reranker" / "1" / "model.onnx").unlink()
    bare = gm.Bare(repo)
    with pytest.raises(RuntimeError, match="no fp32 file"):
        gm.variant_file(bare.spec, "fp32")
    build = gm.contender_builders(repo, bare, None, [])[gm.FP32_PIPELINE]
    with pytest.raises(RuntimeError, match="no fp32 file"):
        asyncio.run(build())


@pytest.mark.parametrize(
    ("backend", "expected", "alone"),
    [
        ("onnx-cuda", "onnx-cuda", True),
        ("onnx-cuda+onnx-cpu", "onnx-cuda", False),
        ("onnx-cpu", "onnx-cuda", False),
        ("triton-grpc", "triton", True),
        ("triton-grpc+onnx-cpu", "triton", False),
    ],
)
def test_a_speed_row_counts_only_requests_its_backend_served_alone(
    backend: str, expected: str, alone: bool
) -> None:
    assert gm.served_only_by(backend, expected) is alone
