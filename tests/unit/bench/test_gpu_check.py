"""`make gpu-check` on a machine without CUDA, and its report writer.

The no-CUDA tests run the real command in a subprocess: it must exit non-zero within a minute, before
installing anything, with a message that names what is missing (never a silent CPU run). Where this machine
has CUDA they are skipped: the command would then really install and measure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import gpu_check
from bench.gpu_check import EXIT_NO_CUDA, Preflight, no_cuda_message, preflight, write_markdown

REPO_ROOT = Path(__file__).resolve().parents[3]

needs_no_cuda = pytest.mark.skipif(
    preflight(sys.executable).ok, reason="this machine has CUDA: gpu-check would really run"
)


def run(
    command: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, env=env or dict(os.environ)
    )
    return done, time.monotonic() - started


def need_make() -> str:
    """GNU make, which the README's commands use; skips without it (fails under CI, where it must be there)."""
    make = shutil.which("make")
    if make is None:
        if os.environ.get("CI"):
            pytest.fail("GNU make is not installed")
        pytest.skip("GNU make is not installed")
    return make


@needs_no_cuda
def test_make_gpu_check_without_cuda_exits_at_once_naming_what_is_missing() -> None:
    done, seconds = run([need_make(), "--no-print-directory", "gpu-check"])
    assert done.returncode != 0
    assert seconds < 60, f"took {seconds:.1f}s"
    err = done.stderr
    assert "no CUDA on this machine" in err and "nothing was installed or measured" in err
    assert "nvidia-smi" in err and "NVML" in err  # what is missing, by name
    assert "pip install" not in done.stdout + err  # stopped before installing anything
    assert not (REPO_ROOT / "bench" / "results" / "gpu.partial.json").exists()


@needs_no_cuda
def test_run_without_cuda_exits_before_the_install(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done, seconds = run([sys.executable, "-m", "bench.gpu_check", "run", "--out", str(out)])
    assert done.returncode == EXIT_NO_CUDA, done.stderr
    assert seconds < 60
    assert "Missing:" in done.stderr and "pip install" not in done.stderr
    assert not out.exists()  # no report of a run that did not happen


@needs_no_cuda
def test_a_driver_tool_without_nvml_is_still_no_cuda(tmp_path: Path) -> None:
    """An `nvidia-smi` that lists a GPU is not enough: NVML must answer too, and the message says which failed."""
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'GPU 0: Fake H200 (UUID: GPU-0)'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done, _ = run([sys.executable, "-m", "bench.gpu_check", "preflight"], env=env)
    assert done.returncode == EXIT_NO_CUDA
    missing = done.stderr.split("Missing:")[1].split("Found:")[0]
    assert "NVML" in missing and "nvidia-smi" not in missing
    assert "Fake H200" in done.stderr.split("Found:")[1]


def test_the_message_lists_missing_and_found() -> None:
    text = no_cuda_message(
        Preflight(missing=["nvidia-smi: not found on PATH"], found=["onnxruntime: onnxruntime-gpu 1.31.1"])
    )
    assert text.splitlines()[1] == "  - nvidia-smi: not found on PATH"
    assert "Found:" in text and "onnxruntime-gpu 1.31.1" in text


def synthetic_results() -> dict:
    return {
        "started": "2026-12-02T08:00:00Z",
        "seconds": 311.4,
        "complete": True,
        "command": "make gpu-check",
        "model": "../shared/models/minilm-l6-rerank-standin",
        "machine": {"gpu": "NVIDIA H200", "driver": "580.65", "used_mb": 900, "total_mb": 143771},
        "versions": {"onnxruntime-gpu": "1.31.1", "sentence-transformers": "6.0.1"},
        "provider": {
            "device_report": {"cuda": "used"},
            "session_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
            "variant": "fp16",
            "onnxruntime": "1.31.1",
            "torch": "2.11.0+cu130",
        },
        "placement": {
            "how": "profiling",
            "fp16": {
                "nodes": 400,
                "by_provider": {"CUDAExecutionProvider": 380, "CPUExecutionProvider": 20},
                "cpu_compute_nodes": 0,
                "cpu_compute_ops": {},
                "cpu_other_ops": {"Shape": 12, "Gather": 8},
            },
        },
        "parity": {
            "queries": 20,
            "docs_per_query": 100,
            "max_abs_diff": 0.0123,
            "mean_abs_diff": 0.0021,
            "spearman": 0.99991,
            "top10_agreement": 0.985,
            "top1_agreement": 1.0,
            "logits_dtype": "tensor(float)",
            "ties_fp32_sigmoid": 0,
            "ties_fp16_sigmoid": 417,
            "gate": {"passed": True, "problems": [], "bounds": {"fp16_max_abs_diff": 0.05}},
        },
        "baseline": {
            "sentence_transformers": "6.0.1",
            "transformers": "5.17.0",
            "pairs": 480,
            "st_fp32_vs_onnx_fp32": {"max_abs_diff": 0.0004, "spearman": 1.0, "top1_agreement": 1.0},
            "st_fp16_vs_onnx_fp32": {"max_abs_diff": 0.02, "spearman": 0.9999, "top1_agreement": 1.0},
            "gate": {
                "passed": False,
                "problems": ["sentence-transformers fp16: fp16 max |diff| 0.06 > 0.05"],
            },
        },
        "oom": {
            "gpu_mem_limit_mb": 70,
            "documents": 100,
            "status": 200,
            "backend": "onnx-cpu",
            "gpu_calls": [
                {"rows": 32, "width": 512, "outcome": "failed"},
                {"rows": 16, "width": 512, "outcome": "failed"},
            ],
            "halved": True,
            "fallbacks_cuda_oom": 8.0,
            "failed_requests": 0,
        },
        "speed": {
            "requests": 30,
            "docs_per_request": 100,
            "contenders": {
                "onnx-cuda fp16 (gateway pipeline)": {
                    "p50_ms": 21.5,
                    "p99_ms": 30.25,
                    "pairs_per_s": 4500.0,
                    "vs_torch_fp16": 1.2,
                },
                "torch fp16 CrossEncoder": {
                    "p50_ms": 26.0,
                    "p99_ms": 40.0,
                    "pairs_per_s": 3750.0,
                    "vs_torch_fp16": 1.0,
                },
                "onnx-cuda fp32 (gateway pipeline)": {
                    "error": "request 3: scored by onnx-cuda+onnx-cpu, not onnx-cuda alone"
                },
            },
        },
        "bare": {
            "batches_tried": [32, 64, 128],
            "tokens": {
                "128": {"onnx-cuda fp16": {"pairs_per_s": 21000.0, "batch": 128, "vs_torch_fp16": 1.1}},
                "512": {
                    "onnx-cuda fp16": {"pairs_per_s": 5200.0, "batch": 128, "vs_torch_fp16": 1.3},
                    "torch fp16 CrossEncoder": {"error": "RuntimeError: torch 2.13.0+cpu has no CUDA"},
                },
            },
        },
        "memory": {
            "how": "a fresh process per contender",
            "contenders": {
                "onnx-cuda fp16 (gateway pipeline)": {"device_used_delta_mb": 612, "this_process_mb": None},
                "torch fp16 CrossEncoder": {"device_used_delta_mb": 800, "torch_max_allocated_mb": 210},
            },
        },
        "triton": {
            "backends": {"/x/tritonserver": ["python"]},
            "notes": ["only the python backend: not measured"],
        },
        "padding": {
            "pairs": 1000,
            "strategies": {
                "budget_16384": {
                    "batches": 40,
                    "padded_tokens_per_real_token": 1.05,
                    "pairs_per_s": 9000.0,
                    "speed_vs_unpadded": 14.2,
                },
                "unpadded": {
                    "batches": 1000,
                    "padded_tokens_per_real_token": 1.0,
                    "pairs_per_s": 634.0,
                    "speed_vs_unpadded": 1.0,
                },
            },
        },
        "errors": {"padding": "RuntimeError: boom"},
        "notes": ["make_session preloads CUDA libraries and takes a gpu_mem_limit"],
    }


def test_report_writer_renders_every_section() -> None:
    text = write_markdown(synthetic_results())
    lines = text.splitlines()
    assert lines[0] == "# GPU check (`make gpu-check`)"
    assert "NVIDIA H200 (driver 580.65)" in text and "took 311 s" in text and "Incomplete" not in text
    assert "onnxruntime-gpu 1.31.1; sentence-transformers 6.0.1" in text
    assert "`['CUDAExecutionProvider', 'CPUExecutionProvider']`" in text
    assert any(line.startswith("| fp16 | 400 |") and "| **0** |" in line for line in lines)
    assert "| 0.0123 | 0.0021 | 0.99991 | 98.5% | 100.0% | tensor(float) | 0 | 417 |" in lines
    assert any(line.startswith("Gate (the export's bounds") and ": passed." in line for line in lines)
    assert "| fp32 | 0.0004 | 1.00000 | 100.0% |" in lines
    assert (
        "Within the export's fp16 bounds: FAILED: sentence-transformers fp16: fp16 max |diff| 0.06 > 0.05."
        in lines
    )
    assert "- GPU batch calls (rows x tokens): 32x512 failed, 16x512 failed" in lines
    assert 'reason="cuda_oom"}` = 8; failed requests: 0' in text
    assert "| onnx-cuda fp16 (gateway pipeline) | 21.5 | 30.2 | 4500.0 | 1.20x |" in lines
    assert (
        "| onnx-cuda fp32 (gateway pipeline) | not measured: request 3: scored by onnx-cuda+onnx-cpu, not "
        "onnx-cuda alone | | | |" in lines
    )
    assert "## Bare throughput, every pair at 128 tokens (best batch of [32, 64, 128])" in lines
    assert (
        "| onnx-cuda fp16 | 21000.0 | 128 | 1.10x |" in lines
        and "| onnx-cuda fp16 | 5200.0 | 128 | 1.30x |" in lines
    )
    assert any(line.startswith("| torch fp16 CrossEncoder | not measured: RuntimeError") for line in lines)
    assert "| onnx-cuda fp16 (gateway pipeline) | 612 | n/a | n/a |" in lines
    assert "| torch fp16 CrossEncoder | 800 | n/a | 210 |" in lines
    assert "- only the python backend: not measured" in lines
    assert "| budget_16384 | 40 | 1.050 | 9000.0 | 14.20x |" in lines
    assert "- padding: RuntimeError: boom" in lines
    assert text.endswith("- make_session preloads CUDA libraries and takes a gpu_mem_limit\n")


def test_report_writer_leaves_out_sections_that_did_not_run_and_says_a_run_was_cut() -> None:
    results = synthetic_results()
    for section in (
        "placement", "parity", "baseline", "oom", "speed", "bare", "memory", "triton", "padding", "errors", "notes",
    ):  # fmt: skip
        del results[section]
    results["complete"] = False
    text = write_markdown(results)
    assert "## Provider" in text and "**Incomplete**" in text
    for heading in ("placement", "fp16 vs fp32", "baseline", "out of memory", "## Speed", "## Bare", "memory",
                    "## Triton", "Padded", "failed"):  # fmt: skip
        assert heading not in text


def test_at_the_deadline_the_measurement_and_its_children_are_stopped(tmp_path: Path) -> None:
    marker = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(marker)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    code_ = gpu_check.run_until([sys.executable, "-c", code], None, time.monotonic() + 2)
    assert code_ == -signal.SIGKILL and time.monotonic() - started < 15
    pid = int(marker.read_text())
    for _ in range(50):  # the grandchild is reaped by init once killed
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the measurement's child {pid} outlived the deadline")


def test_a_run_cut_at_the_deadline_reports_what_it_measured_and_exits_9(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    prepared = gpu_check.Prepared(tmp_path, tmp_path, None, None, {})
    monkeypatch.setattr(gpu_check, "prepare_online", lambda args, python: prepared)

    def cut_short(prepared, args, python, out: Path, deadline: float) -> int:
        partial = {**synthetic_results(), "complete": False}
        for section in ("speed", "bare", "memory", "padding", "errors"):
            del partial[section]
        (out / "gpu.json").write_text(json.dumps(partial))
        return -signal.SIGKILL

    monkeypatch.setattr(gpu_check, "measure", cut_short)
    assert gpu_check.main(["run", "--out", str(out), "--deadline-s", "5"]) == gpu_check.EXIT_TIMED_OUT
    results = json.loads((out / "gpu.json").read_text())
    assert results["errors"] == {"deadline": "stopped after --deadline-s 5.0"} and "parity" in results
    text = (out / "gpu.md").read_text()
    assert "**Incomplete**" in text and "## fp16 vs fp32" in text and "- deadline: stopped after" in text
