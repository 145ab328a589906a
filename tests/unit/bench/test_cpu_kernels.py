"""bench/cpu_kernels.py at a tiny size: both graphs of each precision are built from the exporter's functions,
the plain-op LayerNorms give the fused kernels' fp32 logits, and every configuration is timed and reported (the
committed figures: `python -m bench.cpu_kernels --source FOLDER`)."""

from __future__ import annotations

import json

import family_models as fm
import pytest

from bench import cpu_kernels


@pytest.mark.parametrize("builder", [fm.build_bert, fm.build_modernbert])
def test_each_graph_and_arena_setting_is_measured_and_scores_alike(builder, tmp_path):
    source = builder(tmp_path / "source")
    out = tmp_path / "results"
    args = ["--source", str(source), "--tokens", "24", "--rounds", "2", "--output", str(out)]
    assert cpu_kernels.main(args) == 0
    result = json.loads((out / "cpu_kernels.json").read_text())
    rows = {(r["graph"], r["arena"]): r for r in result["rows"]}
    graphs = ("fp32 fused-kernel", "fp32 plain-op", "int8 fused-kernel", "int8 plain-op")
    assert set(rows) == {(g, a) for g in graphs for a in (False, True)}
    assert rows[("fp32 fused-kernel", False)]["x_baseline"] == 1.0
    assert rows[("fp32 plain-op", True)]["max_abs_diff"] <= 1e-4
    assert all(r["ms"] > 0 for r in rows.values())
    report = (out / "cpu_kernels.md").read_text()
    assert report.count("| fp32 | plain ops |") == 2 and report.count("| int8 | fused kernel |") == 2
