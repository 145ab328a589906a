"""Reads one model folder of the exported repository (manifest.json): what the gateway needs to serve it.

A model family is data here, not a code path: the manifest says the family, the padding side, the score's
activation and, for decoder rerankers, the prompt template the tokenizer wraps each pair in. A calibrated
model's `score_calibration` (fitted at export) holds its logit -> P(relevant) map per precision. Manifests
written before those fields existed read with the defaults of the family table (gateway/families.py) for the
families they could hold (a classifier scored through a sigmoid, right padding, no template).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
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

__all__ = [
    "CalibrationSummary",
    "HeldOutFigures",
    "ManifestFieldError",
    "ModelSpec",
    "PlattMap",
    "PromptTemplate",
    "ScoreCalibration",
    "read_families",
    "read_model_spec",
    "read_score_calibration",
]


CALIBRATION_METHODS = ("platt",)
CALIBRATION_PRECISIONS = ("int8", "fp32")


@dataclass(frozen=True)
class PlattMap:
    """A calibrated model's relevance_score: sigmoid(a * logit + b), fitted at export on the logits of one
    precision (`int8`: the CPU's dynamically quantized file; `fp32`: fp32, fused fp32, fp16, Triton). a > 0."""

    precision: str
    a: float
    b: float


@dataclass(frozen=True)
class HeldOutFigures:
    """The held-out half's figures of one precision: ECE (equal-mass bins) and Brier, before (the plain
    activation) and after the map."""

    pairs: int
    ece_before: float
    ece_after: float
    brier_before: float
    brier_after: float


@dataclass(frozen=True)
class CalibrationSummary:
    """What `/v1/models` and `/info` say of a served model's calibration (`precision`: the map applied)."""

    method: str
    precision: str | None
    data: tuple[str, ...]
    queries_fitted: int
    queries_held_out: int
    pairs_held_out: int
    held_out: HeldOutFigures | None


@dataclass(frozen=True)
class ScoreCalibration:
    """The manifest's `score_calibration` (written by `export/score_calibration.py`): a map per precision,
    the data it was fitted on, and its held-out figures."""

    method: str
    maps: Mapping[str, PlattMap]
    held_out: Mapping[str, HeldOutFigures]
    data: tuple[str, ...]
    queries_fitted: int
    queries_held_out: int
    pairs_fitted: int
    pairs_held_out: int

    @staticmethod
    def precision_of(variant: str) -> str:
        """The map a variant's logits take: the int8 files the int8 map, every other file (fp32, fused fp32,
        fp16 on CUDA, Triton's model.onnx) the fp32 map."""
        return "int8" if variant.startswith("int8") else "fp32"

    def map_for(self, variant: str) -> PlattMap | None:
        return self.maps.get(self.precision_of(variant))

    def summary(self, variant: str | None = None) -> CalibrationSummary:
        """For `variant` (the one served) its map's figures; unloaded (None), the int8 map's (the CPU's)."""
        if variant is not None:
            precision: str | None = self.precision_of(variant)
        else:
            precision = "int8" if "int8" in self.maps else next(iter(self.maps), None)
        if precision not in self.maps:
            precision = None
        return CalibrationSummary(
            method=self.method,
            precision=precision,
            data=self.data,
            queries_fitted=self.queries_fitted,
            queries_held_out=self.queries_held_out,
            pairs_held_out=self.pairs_held_out,
            held_out=self.held_out.get(precision) if precision else None,
        )

    @classmethod
    def from_manifest(cls, raw: Any) -> ScoreCalibration:
        """Parse `score_calibration`; a wrong value raises ManifestFieldError naming its dotted field."""
        where = "score_calibration"
        if not isinstance(raw, dict):
            raise ManifestFieldError(where, f"must be an object or null, not {type(raw).__name__}")
        method = _choice(raw.get("method"), f"{where}.method", CALIBRATION_METHODS, "")
        if not method:
            raise ManifestFieldError(f"{where}.method", f"is required (one of {list(CALIBRATION_METHODS)})")
        variants = raw.get("variants")
        if not isinstance(variants, dict) or not variants:
            raise ManifestFieldError(f"{where}.variants", f"must be a non-empty object, not {variants!r}")
        maps: dict[str, PlattMap] = {}
        held: dict[str, HeldOutFigures] = {}
        for precision, entry in variants.items():
            at = f"{where}.variants.{precision}"
            if precision not in CALIBRATION_PRECISIONS:
                raise ManifestFieldError(at, f"is not one of {list(CALIBRATION_PRECISIONS)}")
            if not isinstance(entry, dict):
                raise ManifestFieldError(at, f"must be an object, not {entry!r}")
            a, b = _number(entry.get("a"), f"{at}.a"), _number(entry.get("b"), f"{at}.b")
            if a <= 0:
                raise ManifestFieldError(f"{at}.a", f"must be above 0 (a monotone map), not {a!r}")
            maps[precision] = PlattMap(precision, a, b)
            figures = entry.get("held_out")
            if figures is not None:
                if not isinstance(figures, dict):
                    raise ManifestFieldError(f"{at}.held_out", f"must be an object, not {figures!r}")
                held[precision] = HeldOutFigures(
                    pairs=_count(figures.get("pairs"), f"{at}.held_out.pairs"),
                    **{
                        key: _number(figures.get(key), f"{at}.held_out.{key}")
                        for key in ("ece_before", "ece_after", "brier_before", "brier_after")
                    },
                )
        data = raw.get("data") or []
        if not isinstance(data, list) or not all(
            isinstance(d, dict) and isinstance(d.get("name"), str) for d in data
        ):
            raise ManifestFieldError(
                f"{where}.data", f"must be a list of {{name, ...}} objects, not {data!r}"
            )
        queries, pairs = raw.get("queries") or {}, raw.get("pairs") or {}
        if not isinstance(queries, dict) or not isinstance(pairs, dict):
            raise ManifestFieldError(
                f"{where}.queries", "queries and pairs must be {fitted, held_out} objects"
            )
        return cls(
            method=method,
            maps=maps,
            held_out=held,
            data=tuple(str(d["name"]) for d in data),
            queries_fitted=_count(queries.get("fitted", 0), f"{where}.queries.fitted"),
            queries_held_out=_count(queries.get("held_out", 0), f"{where}.queries.held_out"),
            pairs_fitted=_count(pairs.get("fitted", 0), f"{where}.pairs.fitted"),
            pairs_held_out=_count(pairs.get("held_out", 0), f"{where}.pairs.held_out"),
        )


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ManifestFieldError(name, f"must be a finite number, not {value!r}")
    return float(value)


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ManifestFieldError(name, f"must be a count (an integer >= 0), not {value!r}")
    return value


def read_score_calibration(manifest: dict[str, Any]) -> ScoreCalibration | None:
    """The manifest's `score_calibration` (None: the model is not calibrated, older manifests included)."""
    raw = manifest.get("score_calibration")
    return None if raw is None else ScoreCalibration.from_manifest(raw)


@dataclass(frozen=True)
class ModelSpec:
    """A model folder as the manifest describes it. `version` (the fp32 sha256) keys the score cache.

    `score_activation` turns the graph's one logit per pair into `relevance_score` (a calibrated model's
    `score_calibration` maps it instead, gateway/assembly.py); `template` is set for decoder rerankers only;
    `variants_skipped` maps a precision left out at export to the reason.
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
    score_calibration: ScoreCalibration | None = None  # fitted at export (`--score-calibration`)

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
            score_calibration=read_score_calibration(manifest),
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
