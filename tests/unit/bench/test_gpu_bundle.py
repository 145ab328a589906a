"""The offline GPU bundle on the CPU: pieces within the per-call limit, checksums, the unpack that derives fp16
and the torch baseline's weights exactly, and `make gpu-check GPU_BUNDLE=...` without network or GPU."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from bench_test_data import tiny_scifact
from fake_wheels import make_wheel

from bench import gpu_bundle, gpu_check, models
from bench.gpu_bundle import BundleError, MiB, build, join, piece_size, receive, split, unpack, verify_pieces
from bench.gpu_check import EXIT_NO_CUDA, preflight

REPO_ROOT = Path(__file__).resolve().parents[3]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("size", "piece", "count"), [(1000, 300, 4), (900, 300, 3), (10, 300, 1)])
def test_split_gives_pieces_within_the_size_and_checksums_that_join_back(
    tmp_path: Path, size: int, piece: int, count: int
) -> None:
    source = tmp_path / "bundle.tar"
    source.write_bytes(np.random.default_rng(size).bytes(size))
    pieces = split(source, tmp_path / "pieces", piece, max_pieces=6)
    assert len(pieces) == count and all(p.stat().st_size <= piece for p in pieces)
    lines = (tmp_path / "pieces" / "SHA256SUMS").read_text().splitlines()
    assert lines == [f"{sha(p)}  {p.name}" for p in pieces] + [f"{sha(source)}  bundle.tar"]
    assert verify_pieces(tmp_path / "pieces") == pieces
    assert sha(join(tmp_path / "pieces")) == sha(source)


def test_more_pieces_than_allowed_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "bundle.tar"
    source.write_bytes(b"x" * 701)
    with pytest.raises(BundleError, match=r"8 pieces of 0\.0 MiB, more than 6"):
        split(source, tmp_path / "pieces", 100, max_pieces=6)


def test_a_damaged_or_missing_piece_is_named(tmp_path: Path) -> None:
    source = tmp_path / "bundle.tar"
    source.write_bytes(b"abcdefghij" * 50)
    pieces = split(source, tmp_path / "pieces", 200)
    pieces[1].write_bytes(b"Z" + pieces[1].read_bytes()[1:])
    pieces[2].unlink()
    with pytest.raises(BundleError, match=r"missing \['bundle.tar.03'\], damaged \['bundle.tar.02'\]"):
        join(tmp_path / "pieces")


def test_a_piece_travels_beside_the_working_tree_within_one_call() -> None:
    tree = gpu_bundle.working_tree_bytes()
    size = piece_size(tree)
    assert size <= 62 * MiB and tree + size <= 64 * MiB
    assert piece_size(int(1.6 * MiB)) == 64 * MiB - int(1.6 * MiB) - MiB  # 1 MiB kept for files added later
    assert piece_size(4 * MiB) == 59 * MiB  # a bigger tree leaves less room


# --- a bundle of the tiny test repository ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bundle(tiny_model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> gpu_bundle.Built:
    """Built as `python -m bench.gpu_bundle build` builds the real one, from the tiny repository, a wheel the
    interpreter lacks and the converter pins it has; pieces of 8 MiB so that there are several."""
    import importlib.metadata as md

    root = tmp_path_factory.mktemp("bundle")
    wheel = make_wheel(root / "wheels", "bundle-only-lib", "1.0.0")
    requirements = [f"onnxruntime-gpu=={md.version('onnxruntime-gpu')}", f"onnx=={md.version('onnx')}"]
    return build(
        root / "out",
        repository=tiny_model_repository,
        wheels=[wheel],
        requirements=[*requirements, "bundle-only-lib>=1"],
        data=tiny_scifact(root / "data"),
        queries=1,
        tree_bytes=int(1.6 * MiB),
        piece_limit=8 * MiB,
    )


def carried(built: gpu_bundle.Built, stash: Path) -> Path:
    """The pieces as the GPU machine's calls leave them: each call's `receive` moves its piece into the stash."""
    for index, piece in enumerate(built.pieces):
        call = stash.parent / f"call-{index}"
        call.mkdir(parents=True)
        shutil.copy2(piece, call / piece.name)
        if index == 0:
            shutil.copy2(piece.parent / "SHA256SUMS", call / "SHA256SUMS")
        assert receive(call, stash) == [piece.name]
        assert not (call / piece.name).exists()
    return stash


def test_the_bundle_is_in_pieces_within_the_limit(tiny_bundle: gpu_bundle.Built) -> None:
    assert 2 <= len(tiny_bundle.pieces) <= 6
    assert all(p.stat().st_size <= 8 * MiB for p in tiny_bundle.pieces)
    folder = tiny_bundle.pieces[0].parent
    done = subprocess.run(
        ["sha256sum", "-c", "--ignore-missing", "SHA256SUMS"], cwd=folder, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.count(": OK") == len(tiny_bundle.pieces)


def test_the_carried_manifest_names_no_path_of_this_machine(tiny_bundle: gpu_bundle.Built) -> None:
    stage = tiny_bundle.pieces[0].parent.parent / "stage"
    text = (stage / "repository" / "reranker" / "manifest.json").read_text()
    manifest = json.loads(text)
    assert str(REPO_ROOT.parent) not in text and "/work/" not in text
    assert manifest["source"]["path"] == "../../baseline"
    assert set(manifest["variants"]) == {"fp32", "fp16"} and "int8" in manifest["variants_not_carried"]
    assert manifest["fp16_derivation"]["same_as_the_exported_file"] is True
    assert tiny_bundle.record["baseline_at_build"]["checked"] is True  # equal to the source safetensors


def test_unpack_derives_the_exported_fp16_file_and_the_exact_baseline_weights(
    tiny_bundle: gpu_bundle.Built, tiny_model_repository: Path, tmp_path: Path
) -> None:
    from safetensors.numpy import load_file

    unpacked = unpack(carried(tiny_bundle, tmp_path / "stash"), sys.executable)
    exported = json.loads((tiny_model_repository / "reranker" / "manifest.json").read_text())
    fp16 = unpacked.repository / "reranker" / "1" / "model.fp16.onnx"
    assert sha(fp16) == exported["variants"]["fp16"]["sha256"]  # the very file `make export` wrote
    assert unpacked.record["install"]["installed_from_bundle"] == ["bundle-only-lib==1.0.0"]
    assert "onnxruntime-gpu" in unpacked.record["install"]["kept_from_the_interpreter"]
    assert (unpacked.site / "bundle_only_lib_mod.py").is_file()
    assert unpacked.baseline is not None
    derived = load_file(str(unpacked.baseline / "model.safetensors"))
    source = load_file(str(Path(exported["source"]["path"]) / "model.safetensors"))
    assert sorted(derived) == sorted(source)
    assert all(derived[k].dtype == source[k].dtype and np.array_equal(derived[k], source[k]) for k in source)
    assert unpacked.record["baseline"]["architecture"] == "BertForSequenceClassification"
    # the unpacked repository is used as it is (never re-exported), its relative source is the baseline
    found = models.resolve_models(unpacked.repository, None, "none")
    assert found.repository == unpacked.repository.resolve()
    assert Path(found.source()) == unpacked.baseline.resolve()


def test_a_derived_fp16_file_that_differs_from_the_manifest_is_refused(
    tiny_bundle: gpu_bundle.Built, tmp_path: Path
) -> None:
    stash = carried(tiny_bundle, tmp_path / "stash")
    gpu_bundle.extract(join(stash), stash / "unpacked")
    manifest_path = stash / "unpacked" / "repository" / "reranker" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["variants"]["fp16"]["sha256"] = "0" * 64  # as if another converter had made it
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"the converter differs\. Built with \{'onnxruntime-gpu'"):
        unpack(stash, sys.executable)
    assert not (stash / "unpacked" / "repository" / "reranker" / "1" / "model.fp16.onnx").exists()


def test_the_calls_carry_one_piece_each_in_order(tiny_bundle: gpu_bundle.Built, tmp_path: Path) -> None:
    pieces = [REPO_ROOT / ".gpu-bundle" / "pieces" / p.name for p in tiny_bundle.pieces]
    calls = gpu_bundle.gpu_calls(pieces, deadline_s=420)
    assert [c.carry[-1] for c in calls] == [f".gpu-bundle/pieces/{p.name}" for p in pieces]
    assert calls[0].carry[0] == ".gpu-bundle/pieces/SHA256SUMS"
    assert all(
        "bench.gpu_bundle receive .gpu-bundle/pieces /tmp/reranker-gpu-bundle" in c.command for c in calls
    )
    assert (
        "make gpu-check GPU_PYTHON=python3 GPU_BUNDLE=/tmp/reranker-gpu-bundle GPU_OUT=$OUT"
        in calls[-1].command
    )
    assert calls[-1].timeout_s == 510 and all(c.timeout_s == 120 for c in calls[:-1])


@pytest.mark.skipif(preflight(sys.executable).ok, reason="this machine has CUDA: gpu-check would really run")
def test_offline_make_gpu_check_unpacks_then_names_the_missing_gpu(
    tiny_bundle: gpu_bundle.Built, tmp_path: Path
) -> None:
    """`make gpu-check GPU_PYTHON=... GPU_BUNDLE=...` in a network namespace without network, on this CPU
    machine: it unpacks (fp16 derived and checked, the missing wheel installed with --no-index), then exits 3
    naming what is missing, within a minute, and reports no measurement."""
    make = shutil.which("make")
    unshare = subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0
    if make is None or not unshare:
        message = "GNU make and unshare -rn (a network namespace) are needed"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    stash = carried(tiny_bundle, tmp_path / "stash")
    out = tmp_path / "out"
    command = ["unshare", "-rn", make, "--no-print-directory", "gpu-check", f"GPU_PYTHON={sys.executable}",
               f"GPU_BUNDLE={stash}", f"GPU_OUT={out}"]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - started
    assert done.returncode != 0 and f"Error {EXIT_NO_CUDA}" in done.stderr, done.stderr  # make's line
    assert seconds < 60, f"took {seconds:.1f}s"
    assert "no CUDA on this machine, so the bundle was unpacked (1 wheels installed into" in done.stderr
    assert "nvidia-smi" in done.stderr.split("Missing:")[1]
    record = json.loads((stash / "unpacked" / "unpack.json").read_text())
    assert record["fp16"]["matches_manifest"] and record["install"]["installed_from_bundle"] == [
        "bundle-only-lib==1.0.0"
    ]
    assert "pip install --no-index" in record["install"]["pip"]
    assert not (out / "gpu.json").exists()


def test_a_carried_repository_naming_another_machines_path_is_used_as_it_is(
    tiny_model_repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "carried"
    shutil.copytree(tiny_model_repository / "reranker", repo / "reranker")
    manifest_path = repo / "reranker" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    source_folder = Path(manifest["source"]["path"])
    manifest["source"]["path"] = "/home/someone/another-machine/tiny-reranker"
    manifest_path.write_text(json.dumps(manifest))
    exports: list[list[str]] = []

    def no_export(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        exports.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "export refused in this test")

    monkeypatch.setattr(models.subprocess, "run", no_export)
    assert models.resolve_models(repo, None, None).repository == repo.resolve()
    # the same weights in a folder here (same sha256) are the same model, whatever path the manifest names
    assert models.resolve_models(repo, str(source_folder), "none").repository == repo.resolve()
    assert exports == []
    with pytest.raises(models.ExportFailed, match="export refused in this test"):
        models.resolve_models(repo, "cross-encoder/another-model", "none")  # another model is exported
    assert (
        exports and "--prefilter" in exports[0] and exports[0][exports[0].index("--prefilter") + 1] == "none"
    )


def run_check(stash: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "bench.gpu_check",
        "run",
        "--bundle",
        str(stash),
        "--out",
        str(tmp_path / "out"),
    ]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_a_damaged_bundle_exits_7_naming_the_piece(tiny_bundle: gpu_bundle.Built, tmp_path: Path) -> None:
    stash = carried(tiny_bundle, tmp_path / "stash")
    last = stash / tiny_bundle.pieces[-1].name
    last.write_bytes(last.read_bytes()[:-1])
    done = run_check(stash, tmp_path)
    assert done.returncode == gpu_check.EXIT_BUNDLE_INVALID, done.stderr
    assert f"damaged ['{last.name}']" in done.stderr and "Traceback" not in done.stderr


def test_a_requirement_the_bundle_cannot_meet_exits_6_before_anything_is_installed(
    tiny_bundle: gpu_bundle.Built, tmp_path: Path
) -> None:
    stash = carried(tiny_bundle, tmp_path / "stash")
    gpu_bundle.extract(join(stash), stash / "unpacked")
    record_path = stash / "unpacked" / "bundle.json"
    record = json.loads(record_path.read_text())
    record["requirements"].append("absent-lib>=1")
    record_path.write_text(json.dumps(record))
    done = run_check(stash, tmp_path)
    assert done.returncode == gpu_check.EXIT_INSTALL_FAILED, done.stderr
    assert "absent-lib>=1 (the check): the interpreter has none, the bundle carries none" in done.stderr
    assert "Traceback" not in done.stderr and not (stash / "site" / "bundle_only_lib_mod.py").exists()
