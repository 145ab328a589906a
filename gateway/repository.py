"""Reads one model folder of the exported repository (manifest.json): what the gateway needs to serve it.

A model family is data here, not a code path: the manifest says the family, the padding side, the score's
activation and, for decoder rerankers, the prompt template the tokenizer wraps each pair in. Manifests
written before those fields existed read with the defaults of the family table (gateway/families.py) for the
families they could hold (a classifier scored through a sigmoid, right padding, no template).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import ModelRepositoryError
from gateway.families import (
    ACTIVATIONS,
    FAMILY_NAMES,
    PADDING_SIDES,
    Activation,
    ManifestFieldError,
    PaddingSide,
    PromptTemplate,
    family_definition,
    family_of_older_manifest,
)

__all__ = ["ManifestFieldError", "ModelSpec", "PromptTemplate", "read_families", "read_model_spec"]


@dataclass(frozen=True)
class ModelSpec:
    """A model folder as the manifest describes it. `version` (the fp32 sha256) keys the score cache.

    `score_activation` turns the graph's one logit per pair into `relevance_score`; `template` is set for
    decoder rerankers only; `variants_skipped` maps a precision left out at export to the reason.
    """

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
    family: str = "bert"  # a name of gateway.families.FAMILIES
    architecture: str = ""
    padding_side: PaddingSide = "right"
    pooling: str = "cls"
    score_activation: Activation = "sigmoid"
    score_formula: str = ""
    template: PromptTemplate | None = None
    variants_skipped: dict[str, str] = field(default_factory=dict)

    def variant_path(self, variant: str) -> Path | None:
        entry = self.variants.get(variant)
        if not entry:
            return None
        path = self.folder / entry["file"]
        return path if path.is_file() else None

    def variant_bytes(self, variant: str) -> int:
        path = self.variant_path(variant)
        return path.stat().st_size if path else 0


def _choice(value: Any, key: str, allowed: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    if value not in allowed:
        raise ManifestFieldError(key, f"{value!r} is not one of {list(allowed)}")
    return str(value)


def read_families(manifest: dict[str, Any]) -> dict[str, Any]:
    """The family fields of a manifest as ModelSpec keyword arguments, defaults for older manifests.

    Raises ManifestFieldError naming the first field whose value is wrong.
    """
    architecture = manifest.get("architecture") or ""
    if not isinstance(architecture, str):
        raise ManifestFieldError("architecture", f"must be a string, not {architecture!r}")
    implied = family_of_older_manifest(architecture, str(manifest.get("model_type") or ""))
    definition = family_definition(_choice(manifest.get("family"), "family", FAMILY_NAMES, implied.name))
    padding_side = _choice(
        manifest.get("padding_side"), "padding_side", PADDING_SIDES, definition.padding_side
    )
    pooling = manifest.get("pooling")
    if pooling is None:
        pooling = definition.pooling
    if not isinstance(pooling, str):
        raise ManifestFieldError("pooling", f"must be a string, not {pooling!r}")
    score = manifest.get("score")
    if score is None:
        score = {}
    if not isinstance(score, dict):
        raise ManifestFieldError("score", f"must be an object, not {score!r}")
    activation = _choice(score.get("activation"), "score.activation", ACTIVATIONS, definition.head.activation)
    formula = score.get("formula") or ""
    if not isinstance(formula, str):
        raise ManifestFieldError("score.formula", f"must be a string, not {formula!r}")
    raw_template = manifest.get("template")
    template = None if raw_template is None else PromptTemplate.from_manifest(raw_template)
    if definition.needs_template and template is None:
        raise ManifestFieldError(
            "template", f"a {definition.name} reranker needs its prompt template (got null)"
        )
    skipped = manifest.get("variants_skipped")
    if skipped is None:
        skipped = {}
    if not isinstance(skipped, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in skipped.items()
    ):
        raise ManifestFieldError("variants_skipped", f"must map variant names to reasons, not {skipped!r}")
    return {
        "family": definition.name,
        "architecture": architecture,
        "padding_side": padding_side,
        "pooling": pooling,
        "score_activation": activation,
        "score_formula": formula,
        "template": template,
        "variants_skipped": dict(skipped),
    }


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
            **read_families(manifest),
        )
    except ManifestFieldError as exc:
        raise ModelRepositoryError(f"{manifest_path} is malformed: {exc}") from exc
    except (KeyError, TypeError, ValueError, StopIteration) as exc:
        raise ModelRepositoryError(f"{manifest_path} is malformed: {exc!r}") from exc
    if not (spec.tokenizer_dir / "tokenizer.json").is_file():
        raise ModelRepositoryError(f"{spec.tokenizer_dir}/tokenizer.json is missing")
    if not any(spec.variant_path(v) for v in variants):
        raise ModelRepositoryError(f"no ONNX file of {folder} exists (variants: {sorted(variants)})")
    return spec
