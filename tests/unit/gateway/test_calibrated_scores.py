"""A calibrated model's scores: the manifest's `score_calibration` read (or refused by field name), the map
applied per served variant, monotone and float32, the ranking and the logits unchanged, the raw option."""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.assembly import ScoreActivation, sigmoid
from gateway.domain import RerankQuery
from gateway.errors import ModelRepositoryError
from gateway.models import ModelStage
from gateway.repository import PlattMap, ScoreCalibration, read_model_spec

QUERY = "berlin population"
DOCUMENTS = (
    "about trains and buses",
    "Berlin has a large population of people.",
    "berlin berlin population population",
    "something else entirely",
    "population figures of a small town",
)

ENTRY: dict[str, Any] = {
    "method": "platt",
    "formula": "relevance_score = 1 / (1 + exp(-(a * logit + b)))",
    "variants": {
        "int8": {"a": 0.8, "b": -2.5, "held_out": {"pairs": 500, "ece_before": 0.21, "ece_after": 0.012,
                                                     "brier_before": 0.09, "brier_after": 0.031}},
        "fp32": {"a": 0.75, "b": -2.4, "held_out": {"pairs": 500, "ece_before": 0.2, "ece_after": 0.015,
                                                     "brier_before": 0.08, "brier_after": 0.03}},
    },
    "data": [{"name": "scifact", "path": "/x/scifact"}, {"name": "nfcorpus", "path": "/x/nfcorpus"}],
    "queries": {"fitted": 100, "held_out": 100},
    "pairs": {"fitted": 10000, "held_out": 10000},
}  # fmt: skip


def with_calibration(source: Path, target: Path, entry: Any) -> Path:
    shutil.copytree(source / "reranker", target / "reranker")
    path = target / "reranker" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["score_calibration"] = entry
    path.write_text(json.dumps(manifest))
    return target


def test_the_manifest_field_is_read(tiny_model_repository, tmp_path):
    spec = read_model_spec(with_calibration(tiny_model_repository, tmp_path, ENTRY), "reranker")
    cal = spec.score_calibration
    assert cal is not None and cal.method == "platt" and cal.data == ("scifact", "nfcorpus")
    assert cal.maps["int8"] == PlattMap("int8", 0.8, -2.5)
    assert (cal.queries_fitted, cal.queries_held_out, cal.pairs_held_out) == (100, 100, 10000)
    summary = cal.summary("fp16")
    assert (
        summary.precision == "fp32" and summary.held_out is not None and summary.held_out.ece_after == 0.015
    )
    assert cal.summary().precision == "int8"  # not loaded yet: the CPU's map
    assert read_model_spec(tiny_model_repository, "reranker").score_calibration is None  # uncalibrated


@pytest.mark.parametrize(
    ("variant", "precision"),
    [("int8", "int8"), ("int8-7bit", "int8"), ("fp32", "fp32"), ("fp32-opt", "fp32"), ("fp16", "fp32")],
)
def test_each_variant_takes_the_map_of_its_logits(variant, precision):
    cal = ScoreCalibration.from_manifest(ENTRY)
    assert ScoreCalibration.precision_of(variant) == precision
    assert cal.map_for(variant) == cal.maps[precision]
    only_int8 = ScoreCalibration.from_manifest({**ENTRY, "variants": {"int8": ENTRY["variants"]["int8"]}})
    assert (only_int8.map_for(variant) is None) == (precision == "fp32")


def _set(entry: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(entry))
    node = out
    *path, last = dotted.split(".")
    for key in path:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return out


_DELETE = object()


@pytest.mark.parametrize(
    ("dotted", "value", "field"),
    [
        ("method", "isotonic", "score_calibration.method"),
        ("method", _DELETE, "score_calibration.method"),
        ("variants", {}, "score_calibration.variants"),
        ("variants.int4", {"a": 1.0, "b": 0.0}, "score_calibration.variants.int4"),
        ("variants.int8.a", -0.5, "score_calibration.variants.int8.a"),
        ("variants.int8.a", "1.0", "score_calibration.variants.int8.a"),
        ("variants.fp32.b", float("nan"), "score_calibration.variants.fp32.b"),
        ("variants.int8.held_out.ece_after", None, "score_calibration.variants.int8.held_out.ece_after"),
        ("variants.int8.held_out.pairs", -1, "score_calibration.variants.int8.held_out.pairs"),
        ("data", "scifact", "score_calibration.data"),
        ("queries.fitted", 1.5, "score_calibration.queries.fitted"),
    ],
)
def test_a_wrong_value_is_refused_naming_the_field(tiny_model_repository, tmp_path, dotted, value, field):
    repo = with_calibration(tiny_model_repository, tmp_path, _set(ENTRY, dotted, value))
    with pytest.raises(ModelRepositoryError, match=f"field '{field}'"):
        read_model_spec(repo, "reranker")


def test_not_an_object_is_refused(tiny_model_repository, tmp_path):
    with pytest.raises(ModelRepositoryError, match="field 'score_calibration': must be an object"):
        read_model_spec(with_calibration(tiny_model_repository, tmp_path, [1, 2]), "reranker")


def test_the_map_is_monotone_float32_and_the_raw_option_is_the_sigmoid():
    act = ScoreActivation("sigmoid", PlattMap("int8", 0.8, -2.5))
    logits = np.sort(np.random.default_rng(0).normal(0, 8, 5000).astype(np.float32))
    logits = np.concatenate([logits, np.float32([-1e4, 1e4, 88.0, -104.0])])
    logits.sort()
    probs = act(logits)
    assert probs.dtype == np.float32 and np.all(np.diff(probs) >= 0)  # never a swap
    assert np.all((probs >= 0) & (probs <= 1))
    with np.errstate(over="ignore"):
        expected = 1.0 / (1.0 + np.exp(-(0.8 * logits.astype(np.float64) - 2.5)))
    assert np.max(np.abs(probs - expected)) < 1e-6
    assert np.array_equal(act(logits, calibrated=False), sigmoid(logits))
    assert np.array_equal(ScoreActivation("sigmoid")(logits), sigmoid(logits))  # uncalibrated: as before
    assert np.array_equal(ScoreActivation("identity", None)(logits), logits)


def test_triton_serves_the_fp32_map_a_local_int8_session_the_int8_map(tiny_spec):
    spec = replace(tiny_spec, score_calibration=ScoreCalibration.from_manifest(ENTRY))
    local = ModelStage(spec, None, None, 512, "int8")  # type: ignore[arg-type]
    triton = ModelStage(spec, None, None, 512, "int8", primary_variant="fp32")  # type: ignore[arg-type]
    assert local.served_variant == "int8" and triton.served_variant == "fp32"
    assert ScoreActivation.of(spec, local.served_variant).calibration == PlattMap("int8", 0.8, -2.5)
    assert ScoreActivation.of(spec, triton.served_variant).calibration == PlattMap("fp32", 0.75, -2.4)


def _calibrated(reranker: Any, prefilter: bool = False) -> None:
    """Load, then give the loaded stages the calibration (the scorers are the counting stand-ins)."""
    asyncio.run(reranker.load())
    models = reranker.models
    models.reranker.spec = replace(
        models.reranker.spec, score_calibration=ScoreCalibration.from_manifest(ENTRY)
    )
    if prefilter and models.prefilter is not None:
        cal = _set(ENTRY, "variants.int8.a", 2.0)
        models.prefilter.spec = replace(
            models.prefilter.spec, score_calibration=ScoreCalibration.from_manifest(cal)
        )


def test_served_scores_are_calibrated_with_ranking_and_logits_unchanged(make_reranker):
    plain, _, _ = make_reranker(keep=0)
    calibrated, _, _ = make_reranker(keep=0)
    _calibrated(calibrated)
    before = asyncio.run(plain.rerank(RerankQuery(QUERY, DOCUMENTS)))
    after = asyncio.run(calibrated.rerank(RerankQuery(QUERY, DOCUMENTS)))
    assert [r.index for r in after.results] == [r.index for r in before.results]  # the same ranking
    assert [r.logit for r in after.results] == [r.logit for r in before.results]  # logits stay raw
    for r in after.results:
        assert r.relevance_score == pytest.approx(1 / (1 + np.exp(-(0.8 * r.logit - 2.5))), abs=1e-6)
    assert [r.relevance_score for r in before.results] != [r.relevance_score for r in after.results]
    raw = asyncio.run(calibrated.rerank(RerankQuery(QUERY, DOCUMENTS, calibrated=False)))
    assert [r.relevance_score for r in raw.results] == [r.relevance_score for r in before.results]
    scores = [r.relevance_score for r in after.results]
    assert scores == sorted(scores, reverse=True)


def test_documents_the_prefilter_cut_carry_its_own_map(make_reranker):
    reranker, _, _ = make_reranker(keep=2)
    _calibrated(reranker, prefilter=True)
    out = asyncio.run(reranker.rerank(RerankQuery(QUERY, DOCUMENTS, keep=2)))
    assert [r.stage for r in out.results] == ["reranker"] * 2 + ["prefilter"] * 3
    for r in out.results:
        a, b = (0.8, -2.5) if r.stage == "reranker" else (2.0, -2.5)
        assert r.relevance_score == pytest.approx(1 / (1 + np.exp(-(a * r.logit + b))), abs=1e-6)
