"""bench/graph_layout.py at a tiny size: the graphs without and with a rewrite (export/graph_layout.py's, or
export/pooled_token.py's) are built from the exporter's functions, give the same fp32 logits, and are timed and
profiled (the committed figures: `python -m bench.graph_layout --source FOLDER [--rewrite pooled-token]`); a
model the rewrite does not touch is refused."""

from __future__ import annotations

import json

import family_models as fm
import pytest

from bench import graph_layout


def test_both_layouts_are_measured_and_score_alike(tmp_path):
    source = fm.build_modernbert(tmp_path / "source")
    out = tmp_path / "results"
    args = ["--source", str(source), "--rows", "2", "--tokens", "40", "--rounds", "2", "--output", str(out)]
    assert graph_layout.main(args) == 0
    result = json.loads((out / "graph_layout.json").read_text())
    assert result["rewrites"] == {"attention_inputs_unpacked": 3, "weight_matmuls_split": 6}
    rows = {r["graph"]: r for r in result["measured"]}
    assert set(rows) == {f"{p} {k}" for p in ("fp32", "int8") for k in graph_layout.KINDS}
    assert rows["fp32 packed"]["x_without"] == 1.0 and rows["fp32 unpacked"]["max_abs_diff"] <= 1e-5
    assert "Transpose" in rows["fp32 packed"]["op_ms"] and "Split" in rows["fp32 packed"]["op_ms"]
    assert "Split" not in rows["fp32 unpacked"]["op_ms"]  # the profile sees the graph that runs
    assert all(r["ms"] > 0 for r in rows.values())
    assert (out / "graph_layout.md").read_text().count("| int8 | unpacked |") == 1


def test_a_model_without_the_pattern_is_refused(tmp_path):
    source = fm.build_bert(tmp_path / "source")
    with pytest.raises(SystemExit, match=r"nothing export/graph_layout\.py rewrites"):
        graph_layout.main(["--source", str(source), "--output", str(tmp_path / "results")])


def test_the_pooled_token_rewrite_is_measured_on_bert(tmp_path):
    source = fm.build_bert(tmp_path / "source")
    out = tmp_path / "results"
    args = ["--source", str(source), "--rewrite", "pooled-token", "--rows", "2", "--tokens", "40", "--rounds", "2",
            "--output", str(out), "--name", "pooled"]  # fmt: skip
    assert graph_layout.main(args) == 0
    result = json.loads((out / "pooled.json").read_text())
    assert result["rewrites"]["pooled_token_attention"] == 1 and result["module"] == "pooled_token"
    rows = {r["graph"]: r for r in result["measured"]}
    assert set(rows) == {f"{p} {k}" for p in ("fp32", "int8") for k in ("all-tokens", "pooled-token")}
    assert rows["fp32 pooled-token"]["max_abs_diff"] <= 1e-5
    # the last Attention runs as a MultiHeadAttention with one query token
    assert "MultiHeadAttention" in rows["fp32 pooled-token"]["op_ms"]
    assert "MultiHeadAttention" not in rows["fp32 all-tokens"]["op_ms"]
    assert "export/pooled_token.py" in (out / "pooled.md").read_text()


def test_a_mean_pooled_model_is_refused_by_the_pooled_token_rewrite(tmp_path):
    source = fm.build_modernbert(tmp_path / "source")
    with pytest.raises(SystemExit, match=r"nothing export/pooled_token\.py rewrites"):
        graph_layout.main(
            ["--source", str(source), "--rewrite", "pooled-token", "--output", str(tmp_path / "r")]
        )
