"""A full-range int8 file (exported with --int8-full-range) is served only on a CPU with VNNI/AMX.

The CPU's flags come from an injected probe, so these tests mean the same on every machine.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.cpu_features import cpu_flags, cpu_variant
from gateway.loading import ModelLoader
from gateway.repository import read_model_spec

VNNI = ["avx512_vnni", "avx_vnni", "amx_int8"]
AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})


def full_range_repository(source: Path, target: Path, *, keep_7bit: bool) -> Path:
    """The tiny repository with its int8 files marked the way a full-range export marks them."""
    shutil.copytree(source, target)
    for name in ("reranker", "prefilter"):
        folder = target / name
        manifest_path = folder / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["variants"]["int8"]["requires_cpu_flags"] = VNNI
        if keep_7bit:
            shutil.copy2(folder / "1" / "model.int8.onnx", folder / "1" / "model.int8-7bit.onnx")
            manifest["variants"]["int8-7bit"] = {
                **manifest["variants"]["int8"],
                "file": "1/model.int8-7bit.onnx",
            }
            del manifest["variants"]["int8-7bit"]["requires_cpu_flags"]
        manifest_path.write_text(json.dumps(manifest))
    return target


def load(repository: Path, flags: frozenset[str]):
    settings = Settings(model_repository=repository, threads=1, device="cpu")
    return ModelLoader.from_settings(settings, cpu_flags_probe=lambda: flags)()


def test_without_vnni_the_7bit_file_is_served_and_info_says_why(
    tiny_model_repository: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    repository = full_range_repository(tiny_model_repository, tmp_path / "repo", keep_7bit=True)
    with caplog.at_level(logging.WARNING, logger="gateway.loading"):
        loaded = load(repository, AVX2_ONLY)
    assert loaded.reranker.variant == "int8-7bit" and loaded.prefilter is not None
    assert loaded.prefilter.variant == "int8-7bit"
    reason = loaded.device_report["cpu_variant"]["reranker"]
    assert "model.int8.onnx needs one of the CPU flags avx512_vnni" in reason
    assert "serving int8-7bit (model.int8-7bit.onnx)" in reason
    assert set(loaded.device_report["cpu_variant"]) == {"reranker", "prefilter"}
    assert any("serving int8-7bit" in r.getMessage() for r in caplog.records)
    # Dynamic int8 all the same: each pair in a batch of its own, so its score does not depend on neighbours.
    assert loaded.reranker.one_row_batches and loaded.prefilter.one_row_batches


def test_without_vnni_and_without_a_7bit_file_fp32_is_served(tiny_model_repository: Path, tmp_path: Path):
    repository = full_range_repository(tiny_model_repository, tmp_path / "repo", keep_7bit=False)
    loaded = load(repository, AVX2_ONLY)
    assert loaded.reranker.variant in ("fp32-opt", "fp32")
    assert f"serving {loaded.reranker.variant}" in loaded.device_report["cpu_variant"]["reranker"]


@pytest.mark.parametrize("flag", VNNI)
def test_with_vnni_or_amx_the_full_range_file_is_served(
    tiny_model_repository: Path, tmp_path: Path, flag: str
):
    repository = full_range_repository(tiny_model_repository, tmp_path / "repo", keep_7bit=True)
    loaded = load(repository, AVX2_ONLY | {flag})
    assert loaded.reranker.variant == "int8" and loaded.prefilter is not None
    assert loaded.prefilter.variant == "int8"
    assert "cpu_variant" not in loaded.device_report


def test_a_7bit_int8_file_needs_no_cpu_flag(tiny_model_repository: Path):
    spec = read_model_spec(tiny_model_repository, "reranker")
    assert cpu_variant(spec, "int8", frozenset()) == ("int8", None)
    assert cpu_variant(spec, "fp32", frozenset())[0] in ("fp32-opt", "fp32")


def test_cpu_flags_reads_the_flags_line(tmp_path: Path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nflags\t\t: fpu sse avx2 avx512_vnni\n\nprocessor\t: 1\nflags\t: fpu\n"
    )
    assert cpu_flags(cpuinfo) == frozenset({"fpu", "sse", "avx2", "avx512_vnni"})
    assert cpu_flags(tmp_path / "missing") == frozenset()
