"""The offline GPU check's bundle: built here, carried in pieces to a GPU machine without network, used there.

Built with the registry here, carried in pieces of at most 62 MiB, unpacked there by `make gpu-check
GPU_PYTHON=python3 GPU_BUNDLE=DIR`.

    python -m bench.gpu_bundle build DIR [--model M | --model-repository R] [--data D]   # here; prints the calls
    python -m bench.gpu_bundle receive FROM STASH    # on the GPU machine: verify the carried pieces, move them
    python -m bench.gpu_bundle unpack STASH          # on the GPU machine (gpu_check does it): join, install, derive

What the bundle holds (one tar, split): the pinned wheels the GPU image lacks (onnxruntime-gpu, the exact onnx
of the fp16 converter, the gateway's pure-Python dependencies; `bundle_pins`), the stand-in cross-encoder's
fp32 ONNX, tokenizer and manifest, the SciFact requests the check sends, and bundle.json (what it was built
from and with). What it does not hold, because it can be derived there exactly:

- the fp16 file: `export.quantize.convert_fp16` of the fp32 file, checked against the sha256 in the carried
  manifest. That sha256 is the output of the same converter run here at build time with the same onnxruntime
  and onnx versions the bundle installs there (both pinned from this venv), so a mismatch means the converter
  differs, and unpack says which versions;
- the PyTorch baseline's weights: read back from the fp32 ONNX (bench/onnx_weights.py), checked at build time
  against the source safetensors and at unpack by a strict load into the architecture.

Each call to the GPU machine carries the working tree and at most 64 MiB in all: the pieces are sized from the
measured working tree (at most 62 MiB, at most 6). DIR must be ignored by git (the default `.gpu-bundle/` is), or
every call would carry every piece.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
CALL_LIMIT = 64 * MiB  # what one call to the GPU machine carries, the working tree included
PIECE_LIMIT = 62 * MiB
MAX_PIECES = 6
TREE_MARGIN = 1 * MiB  # room for files the checkout gains between the build and the calls
TAR_NAME = "bundle.tar"
SUMS = "SHA256SUMS"
PIECE_PREFIX = TAR_NAME + "."
DEFAULT_DIR = REPO_ROOT / ".gpu-bundle"
STASH = "/tmp/reranker-gpu-bundle"  # where the pieces wait on the GPU machine between calls
# The GPU image (KINDS.md): Python 3.12 on x86-64 Linux; pip matches manylinux tags exactly, so name several.
PLATFORMS = (
    "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_24_x86_64", "manylinux_2_27_x86_64",
    "manylinux_2_28_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64",
    "manylinux1_x86_64",
)  # fmt: skip
GPU_MARKERS = {
    "python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
    "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
    "implementation_name": "cpython", "platform_python_implementation": "CPython",
}  # fmt: skip
# Exact pins: the CUDA provider, and the fp16 converter whose output the carried manifest's sha256 records.
CONVERTER = ("onnxruntime-gpu", "onnx")
# The gateway's dependencies the check does not use there (no HTTP server, no tritonserver on the image).
NOT_NEEDED = {"uvicorn", "tritonclient"}
# On the GPU image (KINDS.md's package list) and large, or with a large closure (tokenizers pulls in the hub
# client): never carried; the install plan says so if the image's version falls short.
NOT_CARRIED = {"numpy", "sympy", "mpmath", "ml-dtypes", "tokenizers", "huggingface-hub"}
FP16_FILE = "1/model.fp16.onnx"


class BundleError(Exception):
    """The bundle cannot be built or used (a piece missing or damaged, a derived file that differs)."""


def log(message: str) -> None:
    print(f"[gpu-bundle {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(4 * MiB), b""):
            digest.update(block)
    return digest.hexdigest()


# --- pieces: split, checksums, join -------------------------------------------------------------------


def working_tree_bytes(root: Path = REPO_ROOT) -> int:
    """Bytes of what travels with every call: tracked files and untracked files git does not ignore."""
    listed: set[str] = set()
    for args in (["ls-files", "-z"], ["ls-files", "-z", "-o", "--exclude-standard"]):
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, timeout=60)
        if done.returncode != 0:
            raise BundleError(f"git {' '.join(args)} failed in {root}: {done.stderr.decode().strip()}")
        listed.update(p for p in done.stdout.decode().split("\0") if p)
    return sum((root / p).lstat().st_size for p in listed if (root / p).exists() or (root / p).is_symlink())


def piece_size(tree_bytes: int, limit: int = PIECE_LIMIT) -> int:
    """The largest piece that travels beside the working tree within one call's 64 MiB."""
    return max(1, min(limit, CALL_LIMIT - tree_bytes - TREE_MARGIN))


def split(source: Path, out: Path, piece_bytes: int, max_pieces: int = MAX_PIECES) -> list[Path]:
    """`source` cut into `<name>.01`, `.02`, ... of at most piece_bytes, and SHA256SUMS (the pieces, then the
    whole file: `sha256sum -c --ignore-missing SHA256SUMS` checks them)."""
    total = source.stat().st_size
    count = max(1, -(-total // piece_bytes))
    if count > max_pieces:
        raise BundleError(
            f"{source.name} is {total / MiB:.1f} MiB: {count} pieces of {piece_bytes / MiB:.1f} MiB, more than "
            f"{max_pieces} (carry less, or a smaller working tree)"
        )
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    pieces: list[Path] = []
    with source.open("rb") as fh:
        for index in range(1, count + 1):
            piece = out / f"{source.name}.{index:02d}"
            with piece.open("wb") as dst:
                left = piece_bytes
                while left > 0:
                    block = fh.read(min(left, 4 * MiB))
                    if not block:
                        break
                    dst.write(block)
                    left -= len(block)
            pieces.append(piece)
    lines = [f"{sha256_file(p)}  {p.name}" for p in pieces] + [f"{sha256_file(source)}  {source.name}"]
    (out / SUMS).write_text("\n".join(lines) + "\n")
    return pieces


def read_sums(folder: Path) -> dict[str, str]:
    path = folder / SUMS
    if not path.is_file():
        raise BundleError(f"{path} is missing (it travels with the first piece)")
    sums: dict[str, str] = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise BundleError(f"{path}: malformed line {line!r}")
        sums[name] = digest
    return sums


def piece_names(sums: dict[str, str]) -> list[str]:
    return sorted(n for n in sums if n.startswith(PIECE_PREFIX))


def verify_pieces(folder: Path) -> list[Path]:
    """Every piece SHA256SUMS names is here with its checksum; BundleError naming the missing or damaged."""
    sums = read_sums(folder)
    names = piece_names(sums)
    missing = [n for n in names if not (folder / n).is_file()]
    damaged = [n for n in names if n not in missing and sha256_file(folder / n) != sums[n]]
    if missing or damaged:
        raise BundleError(
            f"{folder}: pieces missing {missing or 'none'}, damaged {damaged or 'none'} (a machine given back "
            "between calls starts bare: carry every piece again, from the first call)"
        )
    return [folder / n for n in names]


def join(folder: Path) -> Path:
    """The pieces joined into the tar again, checked against its own line in SHA256SUMS."""
    pieces = verify_pieces(folder)
    whole = folder / TAR_NAME
    expected = read_sums(folder).get(TAR_NAME)
    if expected is None:
        raise BundleError(f"{folder / SUMS} has no line for {TAR_NAME}")
    if not whole.is_file() or sha256_file(whole) != expected:
        with whole.open("wb") as dst:
            for piece in pieces:
                with piece.open("rb") as src:
                    shutil.copyfileobj(src, dst, 4 * MiB)
        if sha256_file(whole) != expected:
            raise BundleError(f"the joined {TAR_NAME} does not match its checksum")
    return whole


def receive(source: Path, stash: Path) -> list[str]:
    """On the GPU machine, each call: move the carried SHA256SUMS and pieces into the stash (outside the
    checkout, where the next call's copy cannot touch them), each checked against SHA256SUMS."""
    stash.mkdir(parents=True, exist_ok=True)
    if (source / SUMS).is_file():
        shutil.copy2(source / SUMS, stash / SUMS)
    sums = read_sums(stash)
    moved: list[str] = []
    for name in piece_names(sums):
        if (source / name).is_file():
            if sha256_file(source / name) != sums[name]:
                raise BundleError(f"{source / name} arrived damaged (its sha256 differs from SHA256SUMS)")
            shutil.move(str(source / name), stash / name)
            moved.append(name)
    present = [n for n in piece_names(sums) if (stash / n).is_file()]
    log(f"received {moved or 'no piece'}; the stash holds {len(present)} of {len(piece_names(sums))} pieces")
    return moved


# --- what the bundle carries ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pins:
    requirements: tuple[str, ...]  # what the check needs (bundle.json; the plan starts from these)
    wheels: tuple[str, ...]  # name==version of every wheel carried


def bundle_pins() -> Pins:
    """The check's requirements (the converter pinned exactly to this venv; the gateway's own dependencies as
    pyproject.toml states them) and the wheels that satisfy them, at this venv's versions, with their closure
    under the GPU image's markers, less what the image surely has (NOT_CARRIED)."""
    import importlib.metadata as md

    import tomllib
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    requirements = [f"{name}=={md.version(name)}" for name in CONVERTER]
    for text in project["dependencies"]:
        name = canonicalize_name(Requirement(text).name)
        if name not in NOT_NEEDED and name not in CONVERTER:
            requirements.append(text)
    pins: dict[str, str] = {}
    queue = [Requirement(r) for r in requirements]
    while queue:
        req = queue.pop(0)
        if req.marker is not None and not req.marker.evaluate({**GPU_MARKERS, "extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name in pins or name in NOT_CARRIED:
            continue
        try:
            version = md.version(name)
        except md.PackageNotFoundError as exc:
            raise BundleError(f"{req} is not installed in this venv: cannot pin it") from exc
        pins[name] = version
        queue.extend(Requirement(r) for r in md.requires(name) or [])
    return Pins(tuple(requirements), tuple(f"{n}=={v}" for n, v in sorted(pins.items())))


def pin_key(pin: str) -> tuple[str, str]:
    """(canonical name, normalized version) of `name==version`."""
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    name, _, version = pin.partition("==")
    return canonicalize_name(name), str(Version(version))


def wheel_key(path: Path) -> tuple[str, str]:
    """(canonical name, normalized version) of a wheel file name (PEP 427: name-version-...whl)."""
    from packaging.utils import parse_wheel_filename

    name, version, _, _ = parse_wheel_filename(path.name)
    return str(name), str(version)


def fetch_wheels(pins: Sequence[str], cache: Path) -> list[Path]:
    """The pinned wheels for cp312 manylinux x86_64 (pip download; what the cache already has is kept)."""
    cache.mkdir(parents=True, exist_ok=True)
    have = {wheel_key(p): p for p in cache.glob("*.whl")}
    wanted = [p for p in pins if pin_key(p) not in have]
    if wanted:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
            "3.12", "--implementation", "cp", *(a for p in PLATFORMS for a in ("--platform", p)),
            "--disable-pip-version-check", "-d", str(cache), *wanted,
        ]  # fmt: skip
        log(f"downloading {len(wanted)} wheels: {' '.join(wanted)}")
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise BundleError(f"pip download failed: {(done.stderr or done.stdout).strip()[-1500:]}")
        have = {wheel_key(p): p for p in cache.glob("*.whl")}
    missing = [p for p in pins if pin_key(p) not in have]
    if missing:
        raise BundleError(f"no wheel for {missing} in {cache}")
    return [have[pin_key(p)] for p in pins]


def converter_versions() -> dict[str, str]:
    """What `export.quantize.convert_fp16`'s output depends on, in this interpreter."""
    import importlib.metadata as md

    versions: dict[str, str] = {}
    for dist in ("onnxruntime-gpu", "onnxruntime", "onnx", "protobuf", "numpy"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return versions


def derive_fp16(fp32: Path, out: Path, gpu_fusion: dict[str, Any] | None = None) -> dict[str, Any]:
    """The exporter's own converter, as `make export` runs it (fused for the CUDA provider with the manifest's
    fp16 `gpu_fusion`, where it has one); what came out and with what."""
    from export.quantize import GpuFusion, convert_fp16

    fusion = None
    if gpu_fusion:
        fusion = GpuFusion(gpu_fusion["model_type"], gpu_fusion["num_heads"], gpu_fusion["hidden_size"])
    convert_fp16(fp32, out, fusion)
    return {"sha256": sha256_file(out), "bytes": out.stat().st_size, "versions": converter_versions()}


def carried_manifest(manifest: dict[str, Any], fp16: dict[str, Any]) -> dict[str, Any]:
    """The manifest as it travels: the fp32 file, the fp16 file to derive (its sha256 as the converter gave it
    here), the baseline at a relative path (derived at unpack), no other variant, no path of this machine."""
    source = dict(manifest.get("source", {}))
    variants = manifest["variants"]
    if "fp32" not in variants:
        raise BundleError("the repository has no fp32 file to carry")
    fp16_entry = {
        "file": FP16_FILE,
        "sha256": fp16["sha256"],
        "bytes": fp16["bytes"],
        "precision": "fp16",
        "target": "gpu",
        "derived_at_unpack": "export.quantize.convert_fp16 of the fp32 file",
        "gpu_fusion": fp16.get("gpu_fusion"),
    }
    return {
        **manifest,
        "source": {
            "path": "../../baseline",  # relative to this folder: the weights read back from the fp32 ONNX
            "sha256": source.get("sha256", ""),
            "exported_from": source.get("id") or Path(str(source.get("path", "?"))).name,
        },
        "variants": {"fp32": variants["fp32"], "fp16": fp16_entry},
        "variants_not_carried": sorted(k for k in variants if k not in ("fp32", "fp16")),
        "fp16_derivation": {
            "converter": "export.quantize.convert_fp16",
            "versions": fp16["versions"],
            "same_as_the_exported_file": variants.get("fp16", {}).get("sha256") == fp16["sha256"],
        },
    }


def scifact_subset(data_root: Path, out_root: Path, queries: int) -> dict[str, int]:
    """The first `queries` lines of SciFact's BM25 run with only the documents, queries and qrels they use,
    in the layout bench.data.load_set reads."""
    source, target = data_root / "scifact", out_root / "scifact"
    (target / "qrels").mkdir(parents=True, exist_ok=True)
    run = (source / "bm25_top100.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:queries]
    records = [json.loads(line) for line in run]
    doc_ids = {d for r in records for d in r["doc_ids"]}
    query_ids = {r["query_id"] for r in records}
    (target / "bm25_top100.jsonl").write_text("".join(run), encoding="utf-8")
    for name, ids in (("corpus.jsonl", doc_ids), ("queries.jsonl", query_ids)):
        with (
            (source / name).open(encoding="utf-8") as src,
            (target / name).open("w", encoding="utf-8") as dst,
        ):
            dst.writelines(line for line in src if json.loads(line)["_id"] in ids)
    with (source / "qrels" / "test.tsv").open(encoding="utf-8", newline="") as src:
        lines = src.readlines()
    with (target / "qrels" / "test.tsv").open("w", encoding="utf-8", newline="") as dst:
        dst.writelines([lines[0], *(line for line in lines[1:] if line.split("\t")[0] in query_ids)])
    return {"queries": len(records), "documents": len(doc_ids)}


def _add(archive: tarfile.TarFile, path: Path, arcname: str) -> None:
    info = archive.gettarinfo(str(path), arcname)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    with path.open("rb") as fh:
        archive.addfile(info, fh)


def write_tar(out: Path, members: Sequence[tuple[str, Path]]) -> None:
    """An uncompressed tar (the wheels and weights do not compress), in a fixed order, without owners or times."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as archive:
        for arcname, path in sorted(members):
            _add(archive, path, arcname)


@dataclass(frozen=True)
class Built:
    pieces: list[Path]
    piece_bytes: int
    tree_bytes: int
    record: dict[str, Any]


def build(
    target: Path,
    *,
    repository: Path,
    wheels: Sequence[Path],
    requirements: Sequence[str],
    data: Path,
    queries: int,
    tree_bytes: int,
    piece_limit: int = PIECE_LIMIT,
    max_pieces: int = MAX_PIECES,
) -> Built:
    """Stage, tar and split one bundle into target/pieces (target/stage holds what was generated)."""
    from bench.onnx_weights import state_dict_from_onnx

    stage = target / "stage"
    if stage.exists():
        shutil.rmtree(stage)
    (stage / "repository" / "reranker").mkdir(parents=True)
    folder = repository / "reranker"
    manifest = json.loads((folder / "manifest.json").read_text())
    fp32 = folder / manifest["variants"]["fp32"]["file"]
    if manifest["variants"]["fp32"].get("external_data"):
        raise BundleError(
            "an fp32 file with external data is not carried by this bundle (one graph file only)"
        )
    log(f"deriving fp16 from {fp32} with the exporter's converter")
    gpu_fusion = manifest["variants"].get("fp16", {}).get("gpu_fusion")
    fp16 = {**derive_fp16(fp32, stage / "model.fp16.onnx", gpu_fusion), "gpu_fusion": gpu_fusion}
    (stage / "model.fp16.onnx").unlink()
    carried = carried_manifest(manifest, fp16)
    (stage / "repository" / "reranker" / "manifest.json").write_text(json.dumps(carried, indent=1) + "\n")
    baseline = baseline_check_here(manifest, fp32, state_dict_from_onnx)
    subset = scifact_subset(data, stage / "data", queries)
    record = {
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "requirements": list(requirements),
        "wheels": sorted(p.name for p in wheels),
        "model": carried["source"]["exported_from"],
        "fp16": {"sha256": fp16["sha256"], "versions": fp16["versions"]},
        "baseline_at_build": baseline,
        "scifact": subset,
    }
    (stage / "bundle.json").write_text(json.dumps(record, indent=1) + "\n")
    members: list[tuple[str, Path]] = [("bundle.json", stage / "bundle.json")]
    members += [(f"wheels/{p.name}", p) for p in wheels]
    members += [("repository/reranker/manifest.json", stage / "repository" / "reranker" / "manifest.json")]
    members.append((f"repository/reranker/{manifest['variants']['fp32']['file']}", fp32))
    tokenizer = folder / manifest.get("tokenizer_dir", "tokenizer")
    members += [
        (f"repository/reranker/tokenizer/{p.name}", p) for p in sorted(tokenizer.iterdir()) if p.is_file()
    ]
    members += [
        (f"data/{p.relative_to(stage / 'data').as_posix()}", p)
        for p in (stage / "data").rglob("*")
        if p.is_file()
    ]
    tar = target / TAR_NAME
    write_tar(tar, members)
    size = piece_size(tree_bytes, piece_limit)
    pieces = split(tar, target / "pieces", size, max_pieces)
    tar.unlink()
    return Built(pieces, size, tree_bytes, record)


def baseline_check_here(manifest: dict[str, Any], fp32: Path, derive: Any) -> dict[str, Any]:
    """Where the source weights are on this machine, the weights read back from the graph must equal them."""
    import numpy as np

    source = Path(str(manifest.get("source", {}).get("path") or ""))
    weights = source / "model.safetensors"
    if not weights.is_file():
        return {"checked": False, "why": f"no {weights} on this machine"}
    from safetensors.numpy import load_file

    derived, saved = derive(fp32), load_file(str(weights))
    different = sorted(k for k in saved if k not in derived or not np.array_equal(saved[k], derived[k]))
    extra = sorted(set(derived) - set(saved))
    if different or extra:
        raise BundleError(
            f"weights read back from {fp32.name} differ from {weights}: {different[:5]} {extra[:5]}"
        )
    return {"checked": True, "tensors": len(saved), "equal_to": str(weights)}


# --- the calls on the GPU machine -------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    carry: list[str]
    timeout_s: int
    command: str


def gpu_calls(
    pieces: Sequence[Path], root: Path = REPO_ROOT, stash: str = STASH, deadline_s: int = 420
) -> list[Call]:
    """The device tool's `run` calls, in order: one piece each (SHA256SUMS with the first), the check with the
    last. A machine stays warm about 30 s between calls: make them back to back."""
    folder = pieces[0].parent.resolve().relative_to(root.resolve()).as_posix()
    receive_cmd = f"python3 -m bench.gpu_bundle receive {folder} {stash}"
    make = f"make gpu-check GPU_PYTHON=python3 GPU_BUNDLE={stash} GPU_OUT=$OUT GPU_DEADLINE_S={deadline_s}"
    direct = f"python3 -m bench.gpu_check run --bundle {stash} --out $OUT --deadline-s {deadline_s}"
    check = (
        f'set -o pipefail; {receive_cmd} && {{ C="{make}"; command -v make >/dev/null || C="{direct}"; '
        f"PYTHONUNBUFFERED=1 $C 2>&1 | tee $OUT/gpu-check.log; }}"
    )
    calls = []
    for index, piece in enumerate(pieces):
        carry = [f"{folder}/{piece.name}"]
        if index == 0:
            carry.insert(0, f"{folder}/{SUMS}")
        last = index == len(pieces) - 1
        first = "nvidia-smi -L; " if index == 0 and not last else ""
        command = check if last else f"{first}{receive_cmd}"
        calls.append(Call(carry, deadline_s + 90 if last else 120, command))
    return calls


def format_calls(calls: Sequence[Call], tree_bytes: int, piece_bytes: int) -> str:
    lines = [
        f"The GPU machine's calls, in order (device tool `run`), back to back: each carries the working tree "
        f"({tree_bytes / MiB:.2f} MiB) and one piece (at most {piece_bytes / MiB:.2f} MiB), within 64 MiB; "
        f"gpu.json, gpu.md and gpu-check.log come back from $OUT (copy the first two into bench/results/):",
    ]
    for number, call in enumerate(calls, 1):
        lines += [
            f"{number}. carry={json.dumps(call.carry)} timeout_s={call.timeout_s}",
            f"   command: {call.command}",
        ]
    return "\n".join(lines)


# --- on the GPU machine: unpack ----------------------------------------------------------------------------


def extract(tar: Path, into: Path) -> None:
    marker = into / ".extracted-from"
    digest = sha256_file(tar)
    if marker.is_file() and marker.read_text().strip() == digest:
        return
    if into.exists():
        shutil.rmtree(into)
    into.mkdir(parents=True)
    with tarfile.open(tar) as archive:
        archive.extractall(into, filter="data")
    marker.write_text(digest + "\n")


def _child(python: str, site: Path, *args: str) -> dict[str, Any]:
    """A subcommand of this module in a child of the GPU interpreter with the bundle's packages first."""
    from bench.gpu_install import clean_env

    done = subprocess.run(
        [python, "-m", "bench.gpu_bundle", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=clean_env([site, REPO_ROOT]),
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr or done.stdout).strip()[-1500:] or f"exit {done.returncode}"}
    return dict(json.loads(lines[-1]))


@dataclass(frozen=True)
class Unpacked:
    root: Path
    repository: Path
    data: Path
    baseline: Path | None
    site: Path
    record: dict[str, Any]


def unpack(stash: Path, python: str | None = None) -> Unpacked:
    """Verify and join the pieces, extract, install what the interpreter lacks into stash/site, derive fp16
    (checked against the manifest) and the baseline's weights. BundleError or gpu_install.InstallError when
    something is wrong; a baseline that cannot be derived is recorded, not fatal."""
    from packaging.requirements import Requirement

    from bench import gpu_install

    python = python or sys.executable
    started = time.monotonic()
    root = stash / "unpacked"
    extract(join(stash), root)
    (stash / TAR_NAME).unlink(missing_ok=True)
    bundle = json.loads((root / "bundle.json").read_text())
    site = stash / "site"
    plan = gpu_install.plan_install(
        [Requirement(r) for r in bundle["requirements"]],
        gpu_install.read_wheels(root / "wheels"),
        gpu_install.installed_versions(python),
    )
    install = gpu_install.install(plan, python, site)
    folder = root / "repository" / "reranker"
    manifest = json.loads((folder / "manifest.json").read_text())
    fp16 = _child(
        python,
        site,
        "derive-fp16",
        str(folder / manifest["variants"]["fp32"]["file"]),
        str(folder / FP16_FILE),
        json.dumps(manifest["variants"]["fp16"].get("gpu_fusion")),
    )
    expected = manifest["variants"]["fp16"]["sha256"]
    if "error" in fp16:
        raise BundleError(f"the fp16 conversion failed: {fp16['error']}")
    if fp16["sha256"] != expected:
        (folder / FP16_FILE).unlink(missing_ok=True)
        made = manifest.get("fp16_derivation", {}).get("versions", {})
        raise BundleError(
            f"the fp16 file derived here (sha256 {fp16['sha256'][:16]}...) is not the one the manifest records "
            f"({expected[:16]}...): the converter differs. Built with {made}; here {fp16['versions']}"
        )
    baseline = _child(python, site, "derive-baseline", str(folder / manifest["variants"]["fp32"]["file"]),
                      str(folder / manifest.get("tokenizer_dir", "tokenizer")), str(root / "baseline"))  # fmt: skip
    record = {
        "bundle": bundle,
        "install": install,
        "fp16": {**fp16, "matches_manifest": True},
        "baseline": baseline,
        "seconds": round(time.monotonic() - started, 1),
    }
    (root / "unpack.json").write_text(json.dumps(record, indent=1) + "\n")
    return Unpacked(
        root=root,
        repository=root / "repository",
        data=root / "data",
        baseline=None if "error" in baseline else root / "baseline",
        site=site,
        record=record,
    )


# --- the command --------------------------------------------------------------------------------------------


def resolve_repository(args: argparse.Namespace) -> Path:
    from bench.models import resolve_models

    if args.model_repository:
        return Path(args.model_repository)
    from bench.gpu_check import STANDIN_MODEL

    model = args.model or str(STANDIN_MODEL)
    return resolve_models(REPO_ROOT / "bench" / ".work" / "gpu-bundle-repository", model, "none").repository


def ignored_by_git(path: Path) -> bool:
    done = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO_ROOT, capture_output=True)
    return done.returncode == 0


def cmd_build(args: argparse.Namespace) -> int:
    target = Path(args.dir).resolve()
    try:
        target.relative_to(REPO_ROOT)
    except ValueError:
        raise BundleError(
            f"{target} is outside the checkout {REPO_ROOT}: the device tool carries paths inside it"
        ) from None
    target.mkdir(parents=True, exist_ok=True)
    if not ignored_by_git(target):
        raise BundleError(
            f"{target} is not ignored by git: every call would carry every piece (use .gpu-bundle/)"
        )
    pins = bundle_pins()
    wheels = fetch_wheels(pins.wheels, target / "wheels")
    repository = resolve_repository(args)
    tree = working_tree_bytes()
    built = build(
        target, repository=repository, wheels=wheels, requirements=pins.requirements, data=Path(args.data),
        queries=args.queries, tree_bytes=tree, piece_limit=int(args.piece_mib * MiB), max_pieces=args.max_pieces,
    )  # fmt: skip
    for piece in built.pieces:
        log(f"{piece.relative_to(REPO_ROOT)}: {piece.stat().st_size / MiB:.2f} MiB")
    log(
        f"{len(wheels)} wheels ({sum(p.stat().st_size for p in wheels) / MiB:.1f} MiB), repository {repository}"
    )
    print(
        format_calls(gpu_calls(built.pieces, deadline_s=args.deadline_s), built.tree_bytes, built.piece_bytes)
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_bundle", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser(
        "build", help="here, with the registry: wheels, model, requests -> pieces; prints the calls"
    )
    b.add_argument("dir", nargs="?", default=str(DEFAULT_DIR))
    b.add_argument("--model", default=None, help="export source (default: the stand-in cross-encoder)")
    b.add_argument("--model-repository", default=None, help="an exported repository to carry as it is")
    b.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data"))
    b.add_argument("--queries", type=int, default=30, help="SciFact requests carried (gpu_check sends 30)")
    b.add_argument("--piece-mib", type=float, default=PIECE_LIMIT / MiB)
    b.add_argument("--max-pieces", type=int, default=MAX_PIECES)
    b.add_argument(
        "--deadline-s", type=int, default=420, help="the check's own time limit on the GPU machine"
    )
    r = sub.add_parser("receive", help="on the GPU machine: move the carried pieces into the stash, checked")
    r.add_argument("source")
    r.add_argument("stash", nargs="?", default=STASH)
    u = sub.add_parser(
        "unpack", help="on the GPU machine: join, install, derive (gpu_check run --bundle does it)"
    )
    u.add_argument("stash", nargs="?", default=STASH)
    f = sub.add_parser("derive-fp16", help=argparse.SUPPRESS)
    f.add_argument("fp32")
    f.add_argument("out")
    f.add_argument("gpu_fusion", nargs="?", default="null", help="the manifest's fp16 gpu_fusion, as JSON")
    d = sub.add_parser("derive-baseline", help=argparse.SUPPRESS)
    d.add_argument("fp32")
    d.add_argument("files")
    d.add_argument("out")
    args = ap.parse_args(argv)
    from bench.gpu_install import InstallError
    from bench.models import ExportFailed

    try:
        if args.command == "build":
            return cmd_build(args)
        if args.command == "receive":
            receive(Path(args.source), Path(args.stash))
            return 0
        if args.command == "unpack":
            print(json.dumps(unpack(Path(args.stash)).record, indent=1))
            return 0
        if args.command == "derive-fp16":
            print(json.dumps(derive_fp16(Path(args.fp32), Path(args.out), json.loads(args.gpu_fusion))))
            return 0
        from bench.onnx_weights import write_baseline

        done = write_baseline(Path(args.fp32), Path(args.files), Path(args.out))
        print(json.dumps(done.record))
        return 0
    except (BundleError, InstallError) as exc:
        print(f"gpu-bundle: {exc}", file=sys.stderr)
        return 7
    except ExportFailed as exc:  # build: the stand-in's export
        print(f"gpu-bundle: {exc}", file=sys.stderr)
        return 8


if __name__ == "__main__":
    sys.exit(main())
