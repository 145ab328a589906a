"""`make gpu-check`: the GPU path proven in one command on a machine with an NVIDIA GPU and its driver.

    python -m bench.gpu_check preflight          # stdlib only: is there CUDA here? (exit 3 with what is missing)
    python -m bench.gpu_check run [--model M] [--prefilter P] [--wheels DIR]   # preflight, install, export, measure
    python -m bench.gpu_check run --bundle DIR   # offline: unpack the bundle, preflight, measure (no registry)
    python -m bench.gpu_check report             # re-render bench/results/gpu.md from gpu.json

Online (`make gpu-check`, a machine that reaches the registry):
1. **Preflight** (standard library only, a few seconds): `nvidia-smi -L` answers, NVML
   (`libnvidia-ml.so.1`) initialises and counts a GPU. Without them it exits 3 at once naming what is
   missing, before anything is installed: never a silent CPU run.
2. **Install** what the GPU run needs into the venv: onnxruntime-gpu with its CUDA/cuDNN wheels and torch's CUDA
   build where missing (`--wheels DIR`: `pip install --no-index --find-links DIR`). Then a CUDA session must
   really run on `CUDAExecutionProvider`, or it exits 4.
3. **Export** MODEL/PREFILTER when the repository was not exported from them (bench.models.resolve_models; a
   repository given without MODEL is used as it is, whatever machine's path its manifest names).

Offline (`make gpu-check GPU_PYTHON=python3 GPU_BUNDLE=DIR`, the GPU machine without network): no venv, that
interpreter and its packages. bench.gpu_bundle.unpack verifies and joins the carried pieces, installs only what
the interpreter lacks from the bundle's wheels (`--no-index --no-deps`, into DIR/site, first on PYTHONPATH),
derives the fp16 file (checked against the manifest's sha256) and the torch baseline's weights from the fp32
ONNX; then the preflight (exit 3 without a GPU) and the CUDA probe (exit 4). Nothing is exported.

Then both **measure** in a child process (bench/gpu_measure.py: the freshly installed packages, nothing imported
before) that rewrites gpu.json and gpu.md after every section, under a time limit (`--deadline-s`): the
provider the loader really got, node placement, fp16/fp32 parity gated with the export's bounds, the torch
baseline checked against the exported graph, the forced CUDA OOM fallback, bare pairs/s at 128 and 512 tokens,
padded vs unpadded, 100-document requests interleaved (p50/p99, pairs/s) against sentence-transformers torch
fp16, and GPU memory per contender in a fresh process. See EXIT_CODES for every exit.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "bench" / "results"
SHARED_MODELS = REPO_ROOT.parent / "shared" / "models"
STANDIN_MODEL = SHARED_MODELS / "minilm-l6-rerank-standin"
STANDIN_PREFILTER = SHARED_MODELS / "minilm-l2-prefilter-standin"
HUB_MODEL = "cross-encoder/ms-marco-MiniLM-L-6-v2"
EXIT_USAGE = 2
EXIT_NO_CUDA = 3
EXIT_CUDA_UNUSABLE = 4
EXIT_SECTIONS_FAILED = 5
EXIT_INSTALL_FAILED = 6
EXIT_BUNDLE_INVALID = 7
EXIT_EXPORT_FAILED = 8
EXIT_TIMED_OUT = 9
# Every exit of `run`, documented (README's GPU section lists the same table).
EXIT_CODES = {
    0: "measured; every section passed",
    EXIT_USAGE: "the requests or the model repository are missing (nothing measured)",
    EXIT_NO_CUDA: "no NVIDIA GPU and driver answer (nvidia-smi, NVML): nothing installed or measured",
    EXIT_CUDA_UNUSABLE: "a GPU is there but onnxruntime does not run a session on CUDAExecutionProvider",
    EXIT_SECTIONS_FAILED: "measured, but some sections failed or missed a bound (gpu.md lists them)",
    EXIT_INSTALL_FAILED: "an install failed (pip, or a wheel the bundle does not carry)",
    EXIT_BUNDLE_INVALID: "the bundle is incomplete or damaged, or the fp16 file derived from it differs",
    EXIT_EXPORT_FAILED: "the export the run needed failed",
    EXIT_TIMED_OUT: "the measurement ran past --deadline-s and was stopped (the partial report is written)",
}


def log(message: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- 1. preflight: standard library only ----------------------------------------------------------


@dataclass
class Preflight:
    """What the machine has for CUDA: `missing` is empty when a GPU and its driver answer."""

    missing: list[str] = field(default_factory=list)
    found: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing


def check_nvidia_smi(timeout_s: float = 20.0) -> tuple[bool, str]:
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return False, "nvidia-smi: not found on PATH (no NVIDIA driver installed?)"
    try:
        done = subprocess.run([binary, "-L"], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"nvidia-smi: could not run ({exc})"
    gpus = [line for line in done.stdout.splitlines() if line.startswith("GPU ")]
    if done.returncode != 0 or not gpus:
        text = (done.stderr or done.stdout).strip().splitlines()
        return False, f"nvidia-smi: lists no GPU ({text[0] if text else f'exit {done.returncode}'})"
    return True, "nvidia-smi: " + "; ".join(gpus)


def check_nvml() -> tuple[bool, str]:
    """NVML through ctypes (nvidia-ml-py needs the venv; this must work before anything is installed)."""
    try:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError as exc:
        return False, f"NVML: libnvidia-ml.so.1 cannot be loaded ({exc})"
    try:
        rc = lib.nvmlInit_v2()
        if rc != 0:
            return False, f"NVML: nvmlInit failed (NVML error {rc})"
        count = ctypes.c_uint(0)
        rc = lib.nvmlDeviceGetCount_v2(ctypes.byref(count))
        lib.nvmlShutdown()
    except AttributeError as exc:
        return False, f"NVML: the library lacks a symbol ({exc})"
    if rc != 0 or count.value == 0:
        return False, f"NVML: no GPU visible (count {count.value}, NVML error {rc})"
    return True, f"NVML: {count.value} GPU(s) visible"


def check_onnxruntime(
    python: str, timeout_s: float = 45.0, env: dict[str, str] | None = None
) -> tuple[bool, str]:
    """Whether `python`'s onnxruntime offers the CUDA provider (a listing only: running is checked later)."""
    code = (
        "import importlib.metadata as m\n"
        "def has(d):\n"
        "    try:\n        return m.version(d)\n    except m.PackageNotFoundError:\n        return None\n"
        "import onnxruntime as o\n"
        "v = [f'{d} {has(d)}' for d in ('onnxruntime-gpu', 'onnxruntime') if has(d)]\n"
        "print(', '.join(v) + '|' + ','.join(o.get_available_providers()))\n"
    )
    if not Path(python).exists() and shutil.which(python) is None:
        return False, f"onnxruntime: no Python at {python} (the venv is built by `make install`)"
    try:
        done = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=timeout_s, env=env
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"onnxruntime: could not ask {python} ({exc})"
    if done.returncode != 0:
        return False, f"onnxruntime: not importable in {python}"
    versions, _, providers = done.stdout.strip().rpartition("\n")[2].partition("|")
    if "CUDAExecutionProvider" in providers.split(","):
        return True, f"onnxruntime: {versions} offers CUDAExecutionProvider"
    return (
        False,
        f"onnxruntime: {versions or 'installed'} has no CUDAExecutionProvider (providers: {providers})",
    )


def venv_python() -> str:
    venv = Path(os.environ.get("VENV", REPO_ROOT / ".venv"))
    return str(venv / "bin" / "python")


def preflight(python: str | None = None, env: dict[str, str] | None = None) -> Preflight:
    """The driver checks decide; onnxruntime's listing is reported beside them (install fixes it)."""
    result = Preflight()
    for ok, text in (check_nvidia_smi(), check_nvml()):
        (result.found if ok else result.missing).append(text)
    ok, text = check_onnxruntime(python or venv_python(), env=env)
    (result.found if ok else result.notes).append(text)
    return result


def no_cuda_message(p: Preflight, unpacked: str | None = None) -> str:
    """`unpacked`: what the offline path did before it looked (it unpacks first, installing into its own folder)."""
    done = f"the bundle was unpacked ({unpacked}) but nothing was measured" if unpacked else (
        "nothing was installed or measured")  # fmt: skip
    lines = [f"gpu-check: no CUDA on this machine, so {done} (it never runs on the CPU instead). Missing:"]
    lines += [f"  - {m}" for m in p.missing]
    if p.found or p.notes:
        lines.append("Found:")
        lines += [f"  - {f}" for f in p.found + p.notes]
    lines.append(
        "Run `make gpu-check` on a machine with an NVIDIA GPU and its driver (nvidia-smi must list it)."
    )
    return "\n".join(lines)


# --- 2. install ---------------------------------------------------------------------------------

PROBE_CODE = r"""
import json, sys
out = {}
try:
    import onnxruntime as ort
    out["onnxruntime"] = ort.__version__
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as exc:
            out["preload_dlls"] = str(exc)
    import numpy as np, onnx
    from onnx import helper, TensorProto
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    s = ort.InferenceSession(m.SerializeToString(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    s.run(None, {"x": np.ones((2, 2), dtype=np.float32)})
    out["ort_providers"] = s.get_providers()
except Exception as exc:
    out["ort_error"] = f"{type(exc).__name__}: {exc}"
try:
    import torch
    out["torch"] = torch.__version__
    out["torch_cuda"] = bool(torch.cuda.is_available())
except Exception as exc:
    out["torch_error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def probe_runtimes(python: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    try:
        done = subprocess.run(
            [python, "-c", PROBE_CODE], capture_output=True, text=True, timeout=300, env=env
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"probe_error": str(exc)}
    try:
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    except (IndexError, json.JSONDecodeError):
        return {"probe_error": (done.stderr or done.stdout).strip()[-2000:]}


def ort_on_cuda(state: dict[str, Any]) -> bool:
    return (state.get("ort_providers") or [""])[0] == "CUDAExecutionProvider"


class InstallFailed(Exception):
    """pip failed (the message names the command)."""


def pip(python: str, wheels: Path | None, *requirements: str, extra: Sequence[str] = ()) -> None:
    command = [python, "-m", "pip", "install", "--disable-pip-version-check", *extra]
    if wheels is not None:
        command += ["--no-index", "--find-links", str(wheels)]
    command += list(requirements)
    log("$ " + " ".join(command))
    try:
        subprocess.run(command, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise InstallFailed(f"{' '.join(command[:6])} ... failed: {exc}") from exc


def installed_version(python: str, dist: str) -> str | None:
    code = f"import importlib.metadata as m\ntry:\n print(m.version({dist!r}))\nexcept Exception:\n print('')"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    return done.stdout.strip() or None


def cublas_requirement(python: str) -> str | None:
    """`nvidia-cublas~=N.0` for the CUDA major version onnxruntime-gpu's `cuda` extra names (None when the
    extra already brings cuBLAS, or names no CUDA runtime)."""
    code = (
        "import importlib.metadata as m\n"
        "print('\\n'.join(r for r in (m.requires('onnxruntime-gpu') or []) if 'extra == \"cuda\"' in r))"
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    if any("cublas" in line for line in lines):
        return None
    for line in lines:
        match = re.match(r"nvidia-cuda-runtime(-cu\d+)?\s*~=\s*(\d+)", line)
        if match:
            suffix = match.group(1) or ""
            return f"nvidia-cublas{suffix}~={match.group(2)}.0" if not suffix else f"nvidia-cublas{suffix}"
    return None


def ensure_gpu_packages(python: str, wheels: Path | None) -> dict[str, Any]:
    """Install what the CUDA provider and the torch baseline need; the record says what was done."""
    record: dict[str, Any] = {"wheels": str(wheels) if wheels else None, "steps": []}
    state = probe_runtimes(python)
    record["before"] = state
    if not ort_on_cuda(state):
        version = installed_version(python, "onnxruntime-gpu")
        spec = f"onnxruntime-gpu[cuda,cudnn]=={version}" if version else "onnxruntime-gpu[cuda,cudnn]"
        if installed_version(python, "onnxruntime"):  # the CPU package owns the same module: it must go
            subprocess.run([python, "-m", "pip", "uninstall", "-y", "onnxruntime"], check=False)
            record["steps"].append("uninstalled onnxruntime (CPU), which shadows onnxruntime-gpu")
        pip(python, wheels, spec)
        record["steps"].append(f"installed {spec}")
        cublas = cublas_requirement(python)
        if cublas:  # the CUDA provider links cuBLAS, which the `cuda` extra does not list
            pip(python, wheels, cublas)
            record["steps"].append(f"installed {cublas}")
        state = probe_runtimes(python)
    if not state.get("torch_cuda"):
        torch_version = (installed_version(python, "torch") or "").split("+")[0]
        spec = f"torch=={torch_version}" if torch_version else "torch"
        try:
            # PyPI's Linux torch wheel is the CUDA build (the venv may hold the CPU build from a local disk)
            pip(python, wheels, spec, extra=("--force-reinstall",))
            record["steps"].append(f"installed {spec} (CUDA build)")
        except InstallFailed as exc:
            record["steps"].append(f"torch's CUDA build could not be installed ({exc}): no torch baseline")
        state = probe_runtimes(python)
    record["after"] = state
    return record


# --- 3. what to export ---------------------------------------------------------------------------


def default_sources(model: str | None, prefilter: str | None) -> tuple[str, str]:
    """MODEL/PREFILTER as given (or RERANKER_MODEL/RERANKER_PREFILTER), else the stand-ins when present."""
    model = model or os.environ.get("RERANKER_MODEL") or None
    prefilter = prefilter or os.environ.get("RERANKER_PREFILTER") or None
    if model is None:
        model = str(STANDIN_MODEL) if (STANDIN_MODEL / "config.json").exists() else HUB_MODEL
    if prefilter is None:
        prefilter = str(STANDIN_PREFILTER) if (STANDIN_PREFILTER / "config.json").exists() else "none"
    return model, prefilter


# --- 5. the report: a pure function of the results -------------------------------------------------


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _table_rows(rows: dict[str, dict[str, Any]], columns: Sequence[tuple[str, str, int]]) -> list[str]:
    """One line per contender: its columns, or `not measured: why` (a refused contender has no figures)."""
    lines = []
    for name, row in rows.items():
        if row.get("error"):
            lines.append(f"| {name} | not measured: {row['error']} |" + " |" * (len(columns) - 1))
            continue
        cells = []
        for key, kind, digits in columns:
            value = row.get(key)
            cells.append(_ratio(value) if kind == "ratio" else _fmt(value, digits))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def write_markdown(results: dict[str, Any]) -> str:
    """gpu.md from gpu.json: no I/O, no clock (the unit tests feed it a synthetic dict)."""
    lines = ["# GPU check (`make gpu-check`)", ""]
    machine = results.get("machine", {})
    lines.append(
        f"Run {results.get('started', '?')} on {machine.get('gpu', '?')} (driver {machine.get('driver', '?')}), "
        f"model `{results.get('model', '?')}`; `{results.get('command', 'make gpu-check')}` "
        f"took {_fmt(results.get('seconds'), 0)} s."
    )
    if not results.get("complete", True):
        lines += [
            "",
            "**Incomplete**: the run stopped before its last section; what follows is what it measured.",
        ]
    lines.append("")
    errors = results.get("errors", {})
    versions = results.get("versions")
    if versions:
        lines += ["## Versions", "", "; ".join(f"{k} {v}" for k, v in versions.items()), ""]
    provider = results.get("provider")
    if provider:
        lines += [
            "## Provider",
            "",
            f"- the gateway's loader: `{provider.get('device_report', {}).get('cuda', '?')}`; the CUDA session's "
            f"`get_providers()`: `{provider.get('session_providers')}`; variant `{provider.get('variant')}`",
            f"- onnxruntime {provider.get('onnxruntime', '?')}, torch {provider.get('torch', '?')}",
            "",
        ]
    placement = results.get("placement")
    if placement:
        lines += [
            f"## Node placement ({placement.get('how', '')})",
            "",
            "| file | nodes | by provider | compute nodes on the CPU | their ops | other CPU nodes |",
            "|---|---:|---|---:|---|---|",
        ]
        for variant in ("fp16", "fp32"):
            row = placement.get(variant)
            if row:
                lines.append(
                    f"| {variant} | {row['nodes']} | {row['by_provider']} | **{row['cpu_compute_nodes']}** | "
                    f"{row['cpu_compute_ops'] or '-'} | {row['cpu_other_ops'] or '-'} |"
                )
        lines.append("")
    parity = results.get("parity")
    if parity:
        gate = parity.get("gate", {})
        verdict = "passed" if gate.get("passed") else "FAILED: " + "; ".join(gate.get("problems", []))
        lines += [
            f"## fp16 vs fp32 on the CUDA provider ({parity['queries']} SciFact queries x "
            f"{parity['docs_per_query']} documents)",
            "",
            "| max \\|diff\\| of logits | mean \\|diff\\| | Spearman | top-10 agreement | top-1 agreement | "
            "logits dtype | ties (sigmoid in fp32) | ties (sigmoid in fp16, for contrast) |",
            "|---:|---:|---:|---:|---:|---|---:|---:|",
            f"| {parity['max_abs_diff']:.4g} | {parity['mean_abs_diff']:.3g} | {_fmt(parity.get('spearman'), 5)} | "
            f"{100 * parity['top10_agreement']:.1f}% | {100 * parity['top1_agreement']:.1f}% | "
            f"{parity['logits_dtype']} | {parity['ties_fp32_sigmoid']} | {parity['ties_fp16_sigmoid']} |",
            "",
            f"Gate (the export's bounds {gate.get('bounds', {})}): {verdict}. Ties: pairs in a request whose "
            "relevance_score equals another's (the gateway's sigmoid runs in float32 on float32 logits; the fp16 "
            "column is what an fp16 sigmoid would have collapsed).",
            "",
        ]
    baseline = results.get("baseline")
    if baseline:
        gate = baseline.get("gate", {})
        lines += [
            f"## The torch baseline (sentence-transformers {baseline.get('sentence_transformers')}, transformers "
            f"{baseline.get('transformers')}) against the fp32 ONNX, {baseline.get('pairs')} pairs",
            "",
            "| sentence-transformers | max \\|diff\\| | Spearman | top-1 agreement |",
            "|---|---:|---:|---:|",
        ]
        for precision in ("fp32", "fp16"):
            fig = baseline.get(f"st_{precision}_vs_onnx_fp32")
            if fig:
                lines.append(
                    f"| {precision} | {fig['max_abs_diff']:.4g} | {_fmt(fig['spearman'], 5)} | "
                    f"{100 * fig['top1_agreement']:.1f}% |"
                )
        verdict = "passed" if gate.get("passed") else "FAILED: " + "; ".join(gate.get("problems", []))
        lines += ["", f"Within the export's fp16 bounds: {verdict}.", ""]
    oom = results.get("oom")
    if oom:
        calls = ", ".join(f"{c['rows']}x{c['width']} {c['outcome']}" for c in oom.get("gpu_calls", [])[:12])
        lines += [
            "## CUDA out of memory, forced",
            "",
            f"- CUDA provider `gpu_mem_limit` = {oom.get('gpu_mem_limit_mb')} MiB; request of "
            f"{oom.get('documents')} documents: HTTP {oom.get('status')}, backend `{oom.get('backend')}`",
            f"- GPU batch calls (rows x tokens): {calls or 'none'}",
            f"- halved after an OOM: {oom.get('halved')}; batches scored on the CPU: "
            f'`reranker_fallbacks_total{{from_backend="onnx-cuda",to_backend="onnx-cpu",reason="cuda_oom"}}` '
            f"= {_fmt(oom.get('fallbacks_cuda_oom'), 0)}; failed requests: {oom.get('failed_requests')}",
            "",
        ]
    speed = results.get("speed")
    if speed:
        lines += [
            f"## Speed: {speed['requests']} requests of {speed['docs_per_request']} SciFact documents "
            "(512-token cap), interleaved; a row counts only requests its backend served alone",
            "",
            "| contender | p50 ms | p99 ms | pairs/s | vs torch fp16 |",
            "|---|---:|---:|---:|---:|",
            *_table_rows(
                speed["contenders"],
                [("p50_ms", "", 1), ("p99_ms", "", 1), ("pairs_per_s", "", 1), ("vs_torch_fp16", "ratio", 0)],
            ),
            "",
        ]
    bare = results.get("bare")
    if bare:
        for tokens, rows in bare.get("tokens", {}).items():
            lines += [
                f"## Bare throughput, every pair at {tokens} tokens (best batch of {bare['batches_tried']})",
                "",
                "| contender | pairs/s | best batch | vs torch fp16 |",
                "|---|---:|---:|---:|",
                *_table_rows(rows, [("pairs_per_s", "", 1), ("batch", "", 0), ("vs_torch_fp16", "ratio", 0)]),
                "",
            ]
    memory = results.get("memory")
    if memory:
        lines += [
            f"## GPU memory ({memory.get('how', '')})",
            "",
            "| contender | device MiB | NVML, this process MiB | torch allocator peak MiB |",
            "|---|---:|---:|---:|",
            *_table_rows(
                memory["contenders"],
                [
                    ("device_used_delta_mb", "", 0),
                    ("this_process_mb", "", 0),
                    ("torch_max_allocated_mb", "", 0),
                ],
            ),
            "",
        ]
    triton = results.get("triton")
    if triton:
        lines += ["## Triton", ""]
        lines.append(
            f"- backends found: {triton.get('backends') or 'none'} ({triton.get('server') or 'no server'})"
        )
        for note in triton.get("notes", []):
            lines.append(f"- {note}")
        lines.append("")
    padding = results.get("padding")
    if padding:
        lines += [
            f"## Padded vs unpadded on the GPU (bare fp16 session, {padding['pairs']} pairs)",
            "",
            "| strategy | batches | padded / real tokens | pairs/s | speed vs unpadded |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, s in padding["strategies"].items():
            lines.append(
                f"| {name} | {s['batches']} | {s['padded_tokens_per_real_token']:.3f} | {s['pairs_per_s']:.1f} | "
                f"{s['speed_vs_unpadded']:.2f}x |"
            )
        lines.append("")
    if errors:
        lines += ["## Sections that failed", ""]
        lines += [f"- {section}: {text}" for section, text in errors.items()]
        lines.append("")
    for note in results.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines).rstrip() + "\n"


# --- the command ---------------------------------------------------------------------------------


class Stop(Exception):
    """End the run with `code` after printing `message` (every failure `run` knows ends this way)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def cmd_preflight(_: argparse.Namespace) -> int:
    started = time.monotonic()
    p = preflight()
    if not p.ok:
        print(no_cuda_message(p), file=sys.stderr)
        return EXIT_NO_CUDA
    log(f"CUDA found in {time.monotonic() - started:.1f}s: " + "; ".join(p.found + p.notes))
    return 0


@dataclass
class Prepared:
    """What the measurement runs on, however it got there (the venv online, the bundle offline)."""

    repository: Path
    data: Path
    baseline: Path | None
    env: dict[str, str] | None  # the child's environment (None: this one)
    context: dict[str, Any]


def prepare_online(args: argparse.Namespace, python: str) -> Prepared:
    p = preflight()
    if not p.ok:
        raise Stop(EXIT_NO_CUDA, no_cuda_message(p))
    if not (Path(args.data) / "scifact" / "bm25_top100.jsonl").exists():
        raise Stop(
            EXIT_USAGE, f"gpu-check: the SciFact requests are missing: {args.data}/scifact (pass --data)"
        )
    wheels = Path(args.wheels).resolve() if args.wheels else None
    try:
        install = ensure_gpu_packages(python, wheels)
    except (InstallFailed, OSError, subprocess.SubprocessError) as exc:
        raise Stop(EXIT_INSTALL_FAILED, f"gpu-check: the install failed: {exc}") from exc
    if not ort_on_cuda(install["after"]):
        raise Stop(EXIT_CUDA_UNUSABLE, cuda_unusable_message(install["after"]))
    from bench.models import ExportFailed, resolve_models

    repository = Path(args.model_repository)
    explicit = args.model or os.environ.get("RERANKER_MODEL")
    if (repository / "reranker" / "manifest.json").is_file() and not explicit:
        model, prefilter = None, None  # the repository as it is: never a re-export nobody asked for
    else:
        model, prefilter = default_sources(args.model, args.prefilter)
    try:
        models = resolve_models(repository, model, prefilter)
    except ExportFailed as exc:
        raise Stop(EXIT_EXPORT_FAILED, f"gpu-check: {exc}") from exc
    except SystemExit as exc:
        raise Stop(EXIT_USAGE, f"gpu-check: {exc}") from exc
    context = {
        "install": install,
        "preflight": {"found": p.found, "notes": p.notes},
        "model": models.source(),
    }
    return Prepared(models.repository, Path(args.data), None, None, context)


def prepare_bundle(args: argparse.Namespace, python: str) -> Prepared:
    from bench.gpu_bundle import BundleError, unpack
    from bench.gpu_install import InstallError, clean_env

    try:
        unpacked = unpack(Path(args.bundle).resolve(), python)
    except BundleError as exc:
        raise Stop(EXIT_BUNDLE_INVALID, f"gpu-check: the bundle cannot be used: {exc}") from exc
    except InstallError as exc:
        raise Stop(EXIT_INSTALL_FAILED, f"gpu-check: the offline install failed: {exc}") from exc
    except (
        OSError,
        tarfile.TarError,
        ValueError,
        KeyError,
    ) as exc:  # a full disk, a bundle of another layout
        raise Stop(
            EXIT_BUNDLE_INVALID, f"gpu-check: unpacking the bundle failed: {type(exc).__name__}: {exc}"
        ) from exc
    log(f"unpacked in {unpacked.record['seconds']} s: {unpacked.record['install']['installed_from_bundle']}")
    env = clean_env([unpacked.site, REPO_ROOT])
    p = preflight(python, env=env)
    if not p.ok:
        installed = unpacked.record["install"]["installed_from_bundle"]
        raise Stop(
            EXIT_NO_CUDA, no_cuda_message(p, f"{len(installed)} wheels installed into {unpacked.site}")
        )
    state = probe_runtimes(python, env)
    if not ort_on_cuda(state):
        raise Stop(EXIT_CUDA_UNUSABLE, cuda_unusable_message(state))
    context = {
        "install": {**unpacked.record["install"], "probe": state},
        "bundle": {k: v for k, v in unpacked.record.items() if k != "install"},
        "preflight": {"found": p.found, "notes": p.notes},
        "model": unpacked.record["bundle"].get("model"),
    }
    return Prepared(unpacked.repository, unpacked.data, unpacked.baseline, env, context)


def cuda_unusable_message(state: dict[str, Any]) -> str:
    return (
        "gpu-check: a GPU is here but onnxruntime cannot run on it: "
        f"{state.get('ort_error') or state.get('probe_error') or state.get('ort_providers')}. Nothing was measured."
    )


def measure(prepared: Prepared, args: argparse.Namespace, python: str, out: Path, deadline: float) -> int:
    """The measuring child, stopped (its whole process group) at the deadline; gpu.json as it left it."""
    command = [
        python, "-m", "bench.gpu_measure", "--model-repository", str(prepared.repository),
        "--data", str(prepared.data), "--out", str(out / "gpu.json"), "--context", json.dumps(prepared.context),
        "--requests", str(args.requests),
        *(["--baseline", str(prepared.baseline)] if prepared.baseline else []),
    ]  # fmt: skip
    log(f"measuring (at most {max(0, deadline - time.monotonic()):.0f} s): " + " ".join(command[:4]))
    return run_until(command, prepared.env, deadline)


def run_until(command: Sequence[str], env: dict[str, str] | None, deadline: float) -> int:
    """Run `command` in its own process group; at the deadline the whole group (the memory children too) is
    killed and -SIGKILL returned."""
    child = subprocess.Popen(list(command), cwd=REPO_ROOT, env=env, start_new_session=True)
    try:
        return child.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        return -signal.SIGKILL


def cmd_run(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.deadline_s
    python = sys.executable
    out = Path(args.out)
    try:
        prepared = prepare_bundle(args, python) if args.bundle else prepare_online(args, python)
    except Stop as stop:
        print(str(stop), file=sys.stderr)
        return stop.code
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").unlink(missing_ok=True)
    code = measure(prepared, args, python, out, deadline)
    if not (out / "gpu.json").exists():
        print(f"gpu-check: the measurement wrote nothing (exit {code})", file=sys.stderr)
        return EXIT_TIMED_OUT if code == -signal.SIGKILL else (code or 1)
    results = json.loads((out / "gpu.json").read_text())
    results["command"] = "make gpu-check" + (" GPU_BUNDLE=..." if args.bundle else "")
    if code == -signal.SIGKILL:
        results.setdefault("errors", {})["deadline"] = f"stopped after --deadline-s {args.deadline_s}"
    (out / "gpu.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "gpu.md").write_text(write_markdown(results))
    log(f"report: {out / 'gpu.md'}")
    if code == -signal.SIGKILL:
        return EXIT_TIMED_OUT
    if code != 0:
        return code
    return 0 if not results.get("errors") else EXIT_SECTIONS_FAILED


def cmd_report(args: argparse.Namespace) -> int:
    out = Path(args.out)
    (out / "gpu.md").write_text(write_markdown(json.loads((out / "gpu.json").read_text())))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.gpu_check",
        description=__doc__.split("\n")[0],
        epilog="exit codes of run: " + "; ".join(f"{k} {v}" for k, v in EXIT_CODES.items()),
    )
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("preflight", help="is there CUDA here? (standard library only)")
    run = sub.add_parser("run", help="preflight, install, export, measure, report")
    run.add_argument("--model", default=None, help="export source (default: the repository as it is)")
    run.add_argument("--prefilter", default=None, help="'none' for none (default: the stand-in when present)")
    run.add_argument("--model-repository", default=str(REPO_ROOT / "model_repository"))
    run.add_argument("--wheels", default=os.environ.get("GPU_WHEELS") or None)
    run.add_argument(
        "--bundle", default=None, help="offline: the folder the bundle's pieces were received in"
    )
    run.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data"))
    run.add_argument("--requests", type=int, default=30, help="timed 100-document requests per contender")
    run.add_argument("--deadline-s", type=float, default=480.0, help="stop the measurement after this long")
    run.add_argument("--out", default=str(RESULTS))
    report = sub.add_parser("report", help="re-render gpu.md from gpu.json")
    report.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    handlers = {"preflight": cmd_preflight, "run": cmd_run, "report": cmd_report}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
