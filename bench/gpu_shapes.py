"""What a new input shape costs a CUDA session, per attention kernel (the fused fp16 graph ran fixed shapes 2-3x
faster than the unfused one on an H200, but the gateway's varied shapes far slower: `make gpu-check`, 2026-12-04).

    python -m bench.gpu_shapes MODEL_DIR [DEVICE [CALLS]]   # MODEL_DIR: a repository's model folder, with 1/

On the GPU machine, after `python -m bench.gpu_bundle unpack STASH`: MODEL_DIR is
STASH/unpacked/repository/reranker, with PYTHONPATH=STASH/site:. (the bundle's onnxruntime-gpu). Measured there
on 2026-12-04 (bench/results/gpu_shapes.json): onnxruntime-gpu 1.31.1 ran the fused graph's Attention with cuDNN
flash attention whatever the ORT_DISABLE_* switches; a batch shape not seen before cost 64-80 ms a call, a seen
one 1.0-1.5 ms; the unfused file 4.8-12.6 ms and 2.4-3.1 ms.

Each configuration runs in a fresh process (onnxruntime reads its attention switches from the environment once):
the fused fp16 file with onnxruntime's attention kernels switched off one at a time, and the unfused fp16 file.
Per configuration, milliseconds a call: 40 calls each with a sequence length not seen before (batch 16), 40 at
one seen shape, 40 each with a batch size not seen before (256 tokens), 40 at one seen batch size; then 40 new
lengths rounded up to a multiple of 64 (what bucketing on the GPU would give).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIGS: dict[str, dict[str, str]] = {
    "fused, defaults": {},
    "fused, ORT_DISABLE_FUSED_ATTENTION": {"ORT_DISABLE_FUSED_ATTENTION": "1"},
    "fused, ORT_DISABLE_TRT_FLASH_ATTENTION": {"ORT_DISABLE_TRT_FLASH_ATTENTION": "1"},
    "fused, ORT_DISABLE_MEMORY_EFFICIENT_ATTENTION": {"ORT_DISABLE_MEMORY_EFFICIENT_ATTENTION": "1"},
    "fused, no fused/trt-flash/efficient": {
        "ORT_DISABLE_FUSED_ATTENTION": "1",
        "ORT_DISABLE_TRT_FLASH_ATTENTION": "1",
        "ORT_DISABLE_MEMORY_EFFICIENT_ATTENTION": "1",
    },
    "unfused": {},
}


def child(path: Path, device: str, calls: int = 40) -> dict[str, float]:
    import numpy as np

    from gateway.backends.onnx_local import make_session

    session = make_session(path, device=device, threads=4)
    names = {i.name for i in session.get_inputs()}
    rng = np.random.default_rng(0)

    def feed(rows: int, width: int) -> dict[str, Any]:
        mask = np.ones((rows, width), np.int64)
        mask[0, width // 2 :] = 0  # one padded row, as the gateway's batches have
        every = {
            "input_ids": rng.integers(1000, 20000, (rows, width)).astype(np.int64),
            "attention_mask": mask,
            "token_type_ids": np.zeros((rows, width), np.int64),
        }
        return {k: v for k, v in every.items() if k in names}

    def ms(shapes: list[tuple[int, int]]) -> float:
        feeds = [feed(*s) for s in shapes]
        started = time.perf_counter()
        for f in feeds:
            session.run(None, f)
        return round((time.perf_counter() - started) / len(feeds) * 1000, 2)

    session.run(None, feed(16, 300))
    session.run(None, feed(40, 256))
    return {
        "providers": session.get_providers()[0],
        "new_length_ms": ms([(16, w) for w in range(301, 301 + calls)]),
        "seen_length_ms": ms([(16, 300)] * calls),
        "new_batch_ms": ms([(b, 256) for b in range(41, 41 + calls)]),
        "seen_batch_ms": ms([(40, 256)] * calls),
        "new_length_bucketed_64_ms": ms([(16, -(-w // 64) * 64) for w in range(101, 101 + calls)]),
    }  # type: ignore[return-value]


def main(argv: list[str]) -> int:
    if argv[0] == "child":
        print(json.dumps(child(Path(argv[1]), argv[2], int(argv[3]))))
        return 0
    model_dir = Path(argv[0])
    device = argv[1] if len(argv) > 1 else "cuda"
    calls = int(argv[2]) if len(argv) > 2 else 40
    fp32 = model_dir / "1" / "model.onnx"
    scratch = Path(tempfile.mkdtemp(prefix="gpu-shapes-"))
    fused, unfused = scratch / "fused.fp16.onnx", scratch / "unfused.fp16.onnx"
    from export.quantize import GpuFusion, convert_fp16

    manifest = json.loads((model_dir / "manifest.json").read_text())
    convert_fp16(fp32, fused, GpuFusion(manifest["model_type"], num_heads=0, hidden_size=0))
    convert_fp16(fp32, unfused)
    results = {}
    for name, env in CONFIGS.items():
        path = unfused if name == "unfused" else fused
        done = subprocess.run(
            [sys.executable, "-m", "bench.gpu_shapes", "child", str(path), device, str(calls)],
            env={**os.environ, **env, "ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO": "1"},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        lines = done.stdout.strip().splitlines()
        debug = sorted(
            {ln.strip() for ln in (done.stdout + done.stderr).splitlines() if "kernel" in ln.lower()}
        )
        results[name] = (
            json.loads(lines[-1]) if done.returncode == 0 and lines else {"error": done.stderr[-800:]}
        )
        results[name]["kernel_lines"] = debug[:6]
        print(name, json.dumps(results[name]), flush=True)
    out = Path(os.environ.get("OUT", "."))
    (out / "gpu_shapes.json").write_text(json.dumps(results, indent=1) + "\n")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
