"""bench.calibration end to end on the tiny models: calibrate two served models, the held-out figures, the same
threshold on both, both served together by one gateway, and the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from calibration_data import copy_repository, labelled_folder

from bench.calibration import run, write_plot, write_report


def test_a_tiny_run_calibrates_measures_and_serves_both(tiny_model_repository: Path, tmp_path: Path) -> None:
    repo = copy_repository(tiny_model_repository, tmp_path / "repo")
    shutil.rmtree(repo / "prefilter")
    shutil.copytree(repo / "reranker", repo / "twin", symlinks=True)  # a second model whose labels fit too
    manifest = json.loads((repo / "twin" / "manifest.json").read_text())
    (repo / "twin" / "manifest.json").write_text(
        json.dumps({**manifest, "name": "twin", "model_id": "tiny-twin"})
    )
    folders = [
        labelled_folder(repo, "reranker", tmp_path / "data" / "alpha", queries=6, seed=1),
        labelled_folder(repo, "reranker", tmp_path / "data" / "beta", queries=4, seed=2),
    ]
    results = run(
        repo, ["reranker", "twin"], folders, queries=None, cache=tmp_path / "logits", serve_queries=1
    )
    assert set(results["figures"]) == {"reranker", "twin"}
    f = results["figures"]["reranker"]["int8"]
    assert set(f) == {"alpha", "beta", "pooled"}
    assert f["pooled"]["pairs"] == f["alpha"]["pairs"] + f["beta"]["pairs"] == 5 * 20
    assert isinstance(f["pooled"]["meets_targets"], bool) and f["pooled"]["max_bin_gap_after"] >= 0
    [first, *_] = results["thresholds"]
    assert (
        first["threshold"] == 0.05
        and first["reranker/calibrated"]["kept"] >= first["reranker/calibrated/band"]["kept"]
    )
    served = results["served"]
    assert set(served["models"]) == {"tiny-reranker", "tiny-twin"}
    assert all(card is not None and card["data"] == ["alpha", "beta"] for card in served["models"].values())
    for check in served["checks"].values():
        assert check["queries"] == 2 and check["pairs"] == 40
        assert check["max_abs_diff_relevance_vs_offline_map"] < 1e-5  # the gateway serves the fitted map
        assert check["max_abs_diff_logit_vs_cached"] < 1e-4  # and the logits the calibration scored
        assert check["max_abs_diff_raw_option_vs_sigmoid"] < 1e-5 and check["ranking_follows_logits"]
    json.dumps(results)  # JSON-ready
    write_plot(results, tmp_path / "plot.png")
    report = write_report(results, tmp_path / "calibration.md").read_text()
    assert "| reranker | int8 | alpha |" in report and "## Served together" in report
    assert (tmp_path / "plot.png").stat().st_size > 10_000
