"""bench.gpu_shapes on the CPU: every configuration runs in its own process and reports each timing; the file it
writes is what a GPU run brings back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench import gpu_shapes

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_every_configuration_is_timed_in_its_own_process(tiny_model_repository: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_shapes", str(tiny_model_repository / "reranker"), "cpu", "2"],
        cwd=REPO_ROOT, env={**os.environ, "OUT": str(tmp_path)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "gpu_shapes.json").read_text())
    assert set(results) == set(gpu_shapes.CONFIGS)
    for row in results.values():
        assert row["providers"] == "CPUExecutionProvider"
        for key in (
            "new_length_ms",
            "seen_length_ms",
            "new_batch_ms",
            "seen_batch_ms",
            "new_length_bucketed_64_ms",
        ):
            assert row[key] > 0, (key, row)
