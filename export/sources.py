"""Resolve a model source (hub id or local folder) into a checked local folder.

A hub id is downloaded with huggingface_hub and its commit hash recorded; a local folder is recorded by its
absolute path and the sha256 of its weights. Bad sources fail here, before any export work, with a message
that names the problem (missing folder, wrong architecture, more than one logit, truncated weights).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from export.errors import SourceError
from export.families import Family, detect_family

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "merges.txt",
    "vocab.json",
    "added_tokens.json",
)
# sentence-transformers files at the top of a CrossEncoder folder (its head modules sit in N_Name/ folders)
ST_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")
_ST_MODULE_DIR = re.compile(r"^\d+_[A-Za-z]\w*/[^/]+$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelSource:
    """A validated source: where to load it from and how the manifest names it."""

    spec: str
    folder: Path
    model_id: str
    architecture: str
    model_type: str
    family: Family
    hub_id: str | None = None
    revision: str | None = None
    weights_sha256: str | None = None

    def manifest_entry(self) -> dict[str, str]:
        if self.hub_id is not None:
            return {"id": self.hub_id, "revision": self.revision or "unknown"}
        return {"path": str(self.folder), "sha256": self.weights_sha256 or ""}


def looks_like_path(spec: str) -> bool:
    """Paths are anything that exists, starts like a path, or has more than one '/' (hub ids have one)."""
    return (
        Path(spec).expanduser().exists()
        or spec.startswith((".", "/", "~"))
        or spec.count("/") > 1
        or not _HUB_ID.match(spec)
    )


def resolve_source(
    spec: str, *, revision: str | None = None, quiet: bool = False, template: str | None = None
) -> ModelSource:
    """Check a source and return where its files are and its family; raise SourceError naming the problem.

    template: the decoder prompt template (--template) where the folder does not say it.
    """
    if looks_like_path(spec):
        folder = Path(spec).expanduser().resolve()
        if not folder.is_dir():
            raise SourceError(f"model folder not found: {folder} (from {spec!r})")
        family = _check_folder(folder, spec, template, (spec, folder.name))
        return ModelSource(
            spec=spec,
            folder=folder,
            model_id=folder.name,
            architecture=family.architecture,
            model_type=family.model_type,
            family=family,
            weights_sha256=weights_sha256(folder),
        )
    folder, commit = _download(spec, revision, quiet)
    family = _check_folder(folder, spec, template, (spec,))
    return ModelSource(
        spec=spec,
        folder=folder,
        model_id=spec,
        architecture=family.architecture,
        model_type=family.model_type,
        family=family,
        hub_id=spec,
        revision=commit,
    )


def _download(model_id: str, revision: str | None, quiet: bool) -> tuple[Path, str]:
    try:
        from huggingface_hub import HfApi, snapshot_download
        from huggingface_hub.utils import disable_progress_bars

        if quiet:
            disable_progress_bars()
        info = HfApi().model_info(model_id, revision=revision)
        commit = info.sha or revision or "main"
        files = [s.rfilename for s in info.siblings or []]
        path = Path(snapshot_download(model_id, revision=commit, allow_patterns=hub_files_to_fetch(files)))
    except Exception as exc:
        raise SourceError(
            f"could not download {model_id!r} from the Hugging Face hub ({type(exc).__name__}: {exc}); "
            "check the id and the network, or pass a local folder"
        ) from exc
    return path, commit


def hub_files_to_fetch(files: list[str]) -> list[str]:
    """Top-level config, tokenizer and ONE weights format (safetensors first): hub repos of cross-encoders
    also carry onnx/ and openvino/ folders and both weight formats, none of which the export needs."""
    top = [f for f in files if "/" not in f]
    wanted = [f for f in top if f == "config.json" or f in TOKENIZER_FILES or f in ST_FILES]
    if "modules.json" in top:  # a sentence-transformers head: its module folders' configs and weights
        wanted += [f for f in files if _ST_MODULE_DIR.match(f)]
    for index_name, single, prefix, suffix in (
        ("model.safetensors.index.json", "model.safetensors", "model-", ".safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin", "pytorch_model-", ".bin"),
    ):
        if single in top:
            return [*wanted, single]
        if index_name in top:
            shards = [f for f in top if f.startswith(prefix) and f.endswith(suffix)]
            return [*wanted, index_name, *shards]
    return wanted  # no weights: _check_folder reports it


def _check_folder(folder: Path, spec: str, template: str | None, hints: tuple[str, ...]) -> Family:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise SourceError(f"{spec!r}: no config.json in {folder}; not a Hugging Face model folder")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise SourceError(f"{spec!r}: config.json is not valid JSON ({exc})") from exc
    family = detect_family(folder, config, spec, template=template, hints=hints)
    _check_weights(folder, spec)
    if not any(
        (folder / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
    ):
        raise SourceError(f"{spec!r}: no tokenizer files (tokenizer.json / vocab.txt) in {folder}")
    return family


def _weight_files(folder: Path) -> list[Path]:
    for index_name in SHARD_INDEXES:
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / s for s in shards]
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
    return []


def _check_weights(folder: Path, spec: str) -> None:
    files = _weight_files(folder)
    if not files:
        raise SourceError(
            f"{spec!r}: no weights in {folder} (expected one of {', '.join(WEIGHT_FILES)}); "
            "a config-and-tokenizer-only folder cannot be exported"
        )
    for path in files:
        if not path.is_file():
            raise SourceError(f"{spec!r}: weights shard {path.name} is missing")
        if path.suffix == ".safetensors":
            _check_safetensors(path, spec)
        elif path.stat().st_size < 1024:
            raise SourceError(
                f"{spec!r}: weights file {path.name} is only {path.stat().st_size} bytes (truncated?)"
            )


def _check_safetensors(path: Path, spec: str) -> None:
    """A safetensors header declares every tensor's byte range: a shorter file was truncated."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise SourceError(f"{spec!r}: weights file {path.name} is truncated ({size} bytes)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8:
            raise SourceError(
                f"{spec!r}: weights file {path.name} is truncated ({size} bytes) or not safetensors"
            )
        try:
            header = json.loads(fh.read(header_len))
        except ValueError as exc:
            raise SourceError(f"{spec!r}: weights file {path.name} has a corrupt header ({exc})") from exc
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    expected = 8 + header_len + end
    if size < expected:
        raise SourceError(
            f"{spec!r}: weights file {path.name} is truncated: {size:,} bytes on disk, its header "
            f"declares {expected:,}"
        )


def weights_sha256(folder: Path) -> str:
    """sha256 of the weights file (of the concatenated shards when sharded)."""
    digest = hashlib.sha256()
    for path in _weight_files(folder):
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
