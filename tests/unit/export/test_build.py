"""Atomic and idempotent builds: a failed gate leaves nothing behind; a re-run replaces cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from export import build_repository
from export.errors import ParityError
from export.validate import Thresholds

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory, tiny_model_factory: Callable[..., Path]) -> Path:
    return tiny_model_factory(tmp_path_factory.mktemp("src") / "tiny-reranker", seed=0)


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.rglob("*") if ".build-" in p.name or ".old-" in p.name)


def test_failed_gate_writes_nothing_and_keeps_the_old_repository(tiny_source: Path, tmp_path: Path):
    output = tmp_path / "model_repository"
    (output / "reranker").mkdir(parents=True)
    (output / "reranker" / "previous").write_text("the last good export")
    impossible = Thresholds(int8_min_spearman=1.01)

    with pytest.raises(ParityError, match=r"int8 Spearman vs fp32 .* < 1.01.*no repository was written"):
        build_repository(str(tiny_source), None, output, quiet=True, thresholds=impossible)

    assert [p.name for p in (output / "reranker").iterdir()] == ["previous"]
    assert not (output / "prefilter").exists()
    assert leftovers(tmp_path) == []


def test_rerun_replaces_the_folders_and_same_prefilter_reuses_the_cross_encoder(
    tiny_source: Path, tmp_path: Path
):
    output = tmp_path / "model_repository"
    output.mkdir()
    (output / "README.md").write_text("kept")

    first = build_repository(str(tiny_source), "same", output, quiet=True)
    (output / "reranker" / "stale-file").write_text("x")
    second = build_repository(str(tiny_source), "same", output, quiet=True)

    assert (output / "README.md").read_text() == "kept"
    assert not (output / "reranker" / "stale-file").exists()
    assert leftovers(tmp_path) == []
    assert set(second) == {"reranker", "prefilter"}
    assert second["reranker"]["parity"]["figures"] == first["reranker"]["parity"]["figures"]
    prefilter = json.loads((output / "prefilter" / "manifest.json").read_text())
    assert prefilter["role"] == "prefilter" and prefilter["name"] == "prefilter"
    assert prefilter["variants"]["int8"]["sha256"] == second["reranker"]["variants"]["int8"]["sha256"]
    assert 'name: "prefilter"' in (output / "prefilter" / "config.pbtxt").read_text()
    assert 'name: "prefilter"' in (output / "prefilter" / "configs" / "cpu.pbtxt").read_text()


def test_cli_quiet_builds_only_the_reranker_with_prefilter_none(tiny_source: Path, tmp_path: Path):
    output = tmp_path / "repo"
    result = subprocess.run(
        [sys.executable, "-m", "export", "--model", str(tiny_source), "--prefilter", "none",
         "--output", str(output), "--name", "ce", "--max-length", "256", "--no-int8-reduce-range", "--quiet"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert sorted(p.name for p in output.iterdir()) == ["ce"]
    manifest = json.loads((output / "ce" / "manifest.json").read_text())
    assert manifest["name"] == "ce" and manifest["max_length"] == 256
    assert manifest["int8_settings"]["reduce_range"] is False
    assert manifest["parity"]["max_tokens"] == 256 and manifest["parity"]["pairs_at_max_length"] > 0


def test_cli_shows_progress_at_a_terminal(tiny_source: Path, tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "export", "--model", str(tiny_source), "--prefilter", "none",
         "--output", str(tmp_path / "repo"), "--max-length", "256"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for step in ("export fp32 ONNX", "quantize int8", "validate against PyTorch", "int8 Spearman"):
        assert step in result.stderr
