"""`python -m bench.denormals`: the same session on a thread that flushes denormals and on one that keeps them, its
layer rows and an exported model's, written as a report."""

from __future__ import annotations

import json
import platform
import sys

import pytest

from bench.denormals import main

X86_LINUX = sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")


@pytest.mark.skipif(not X86_LINUX, reason="the bench sets the CPU's modes on x86-64 Linux only, and says so")
def test_each_row_compares_both_modes_and_finds_the_same_outputs(tiny_model_repository, tmp_path):
    model = tiny_model_repository / "reranker" / "1" / "model.onnx"
    out = tmp_path / "results"
    assert main(["--model", str(model), "--tokens", "16", "--repeats", "1", "--output", str(out),
                 "--work", str(tmp_path / "work")]) == 0  # fmt: skip
    results = json.loads((out / "denormals.json").read_text())
    labels = [r["label"] for r in results["rows"]]
    assert labels == [
        "one local attention layer, keys beyond 64 tokens masked",
        "one local attention layer, nothing masked",
        "reranker/model.onnx, one 16-token pair",
    ]
    for row in results["rows"]:
        assert row["same_outputs"] is True and row["kept_ms"] > 0 and row["flushed_ms"] > 0
    report = (out / "denormals.md").read_text()
    assert "| reranker/model.onnx, one 16-token pair |" in report and "flushed speed-up" in report


def test_a_missing_model_file_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path / "absent.onnx"), "--output", str(tmp_path)])
    assert "absent.onnx" in capsys.readouterr().err
