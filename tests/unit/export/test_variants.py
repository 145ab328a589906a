"""External data above the size threshold, and per-variant gating: a reduced-precision file that misses its
bound is left out and recorded (an fp32 graph off PyTorch aborts: tests/unit/export/test_build.py)."""

from __future__ import annotations

import json
from pathlib import Path

import family_models as fm
import onnx
import pytest

from export import build_repository, onnx_export
from export.sources import file_sha256
from export.validate import Thresholds

# int8 can never reach a Spearman above 1: the int8 variants miss their bound, the rest is written
NO_INT8 = Thresholds(int8_min_spearman=1.01)


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fm.build_bert(tmp_path_factory.mktemp("bert") / "tiny-bert")


@pytest.fixture(scope="module")
def external_export(bert: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One export with a forced 200 kB external-data threshold and an int8 gate nothing can pass."""
    output = tmp_path_factory.mktemp("repo")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD_BYTES", 200_000)
        manifests = build_repository(str(bert), None, output, quiet=True, thresholds=NO_INT8)
    return output / "reranker", manifests["reranker"]


@pytest.mark.slow
def test_large_graphs_are_saved_with_external_data(external_export: tuple[Path, dict], bert: Path):
    folder, manifest = external_export
    fp32 = manifest["variants"]["fp32"]
    assert [d["file"] for d in fp32["external_data"]] == ["1/model.onnx.data"]
    data = folder / "1" / "model.onnx.data"
    assert fp32["external_data"][0]["sha256"] == file_sha256(data)
    assert data.stat().st_size > 200_000 > (folder / "1" / "model.onnx").stat().st_size
    proto = onnx.load(str(folder / "1" / "model.onnx"), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    # ONNX Runtime finds the data beside the graph: the exported scores are the PyTorch ones
    assert manifest["parity"]["figures"]["fp32"]["max_abs_diff"] <= 1e-4
    assert fm.exported_scores(folder, [("a query", "a document")]) == pytest.approx(
        fm.reference_scores(bert, [("a query", "a document")]), abs=1e-4
    )
    for key in ("fp32-opt", "fp16"):  # every written graph over the threshold carries its own data file
        variant = manifest["variants"][key]
        for entry in variant.get("external_data", []):
            assert (folder / entry["file"]).is_file() and entry["file"] == variant["file"] + ".data"


@pytest.mark.slow
def test_a_failing_int8_variant_is_left_out_and_the_rest_is_written(external_export: tuple[Path, dict]):
    folder, manifest = external_export
    assert manifest["family"] == "bert" and manifest["template"] is None
    assert set(manifest["variants"]) == {"fp32", "fp32-opt", "fp16"}
    assert manifest["variants_skipped"].keys() == {"int8"}
    assert "int8 Spearman vs fp32" in manifest["variants_skipped"]["int8"]
    assert not list((folder / "1").glob("model.int8.onnx*"))
    # the CPU onnxruntime config serves the best file that passed: the fused fp32 graph
    cpu = (folder / "configs" / "cpu-onnxruntime.pbtxt").read_text()
    assert 'default_model_filename: "model.opt.onnx"' in cpu
    on_disk = json.loads((folder / "manifest.json").read_text())
    assert on_disk["variants_skipped"] == manifest["variants_skipped"]
