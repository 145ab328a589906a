"""Reads one model folder of the exported repository (manifest.json): what the gateway needs to serve it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import ModelRepositoryError


@dataclass(frozen=True)
class ModelSpec:
    """A model folder as the manifest describes it. `version` (the fp32 sha256) keys the score cache."""

    name: str
    role: str
    model_id: str
    folder: Path
    max_length: int
    input_names: tuple[str, ...]
    tokenizer_dir: Path
    variants: dict[str, dict[str, Any]]
    version: str
    cascade: dict[str, Any] = field(default_factory=dict)  # calibrated by `python -m export --calibration`

    def variant_path(self, variant: str) -> Path | None:
        entry = self.variants.get(variant)
        if not entry:
            return None
        path = self.folder / entry["file"]
        return path if path.is_file() else None

    def variant_bytes(self, variant: str) -> int:
        path = self.variant_path(variant)
        return path.stat().st_size if path else 0


def read_model_spec(repository: Path, name: str) -> ModelSpec:
    """Parse `<repository>/<name>/manifest.json`; a missing or broken folder is a ModelRepositoryError."""
    folder = repository / name
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise ModelRepositoryError(
            f"no model '{name}' in {repository}: {manifest_path} is missing (run `make export` first)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        variants = dict(manifest["variants"])
        inputs = tuple(str(item["name"]) for item in manifest["inputs"])
        fp32 = variants.get("fp32") or next(iter(variants.values()))
        version = str(
            fp32.get("sha256") or manifest.get("source", {}).get("sha256") or manifest["created_at"]
        )
        spec = ModelSpec(
            name=str(manifest.get("name", name)),
            role=str(manifest.get("role", "reranker")),
            model_id=str(manifest.get("model_id", name)),
            folder=folder,
            max_length=int(manifest.get("max_length") or 512),
            input_names=inputs,
            tokenizer_dir=folder / str(manifest.get("tokenizer_dir", "tokenizer")),
            variants=variants,
            version=version,
            cascade=dict(manifest.get("cascade") or {}),
        )
    except (KeyError, TypeError, ValueError, StopIteration) as exc:
        raise ModelRepositoryError(f"{manifest_path} is malformed: {exc!r}") from exc
    if not (spec.tokenizer_dir / "tokenizer.json").is_file():
        raise ModelRepositoryError(f"{spec.tokenizer_dir}/tokenizer.json is missing")
    if not any(spec.variant_path(v) for v in variants):
        raise ModelRepositoryError(f"no ONNX file of {folder} exists (variants: {sorted(variants)})")
    return spec
