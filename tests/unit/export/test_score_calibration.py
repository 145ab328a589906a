"""Score calibration at export: the Platt fit, the figures, the BEIR reader, the manifest entry, the CLIs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from calibration_data import calibrated_repository, copy_repository, labelled_folder, write_beir

from export.__main__ import parse_args
from export.errors import ExportError
from export.score_calibration import (
    BINS,
    Platt,
    brier,
    ece,
    fit_platt,
    main,
    read_beir,
    reliability,
    split_queries,
)
from gateway.repository import read_model_spec


def _synthetic(a: float, b: float, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(-1.0, 2.5, n)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(a * x + b)))).astype(float)
    return x, y


@pytest.mark.parametrize(("a", "b"), [(1.7, -2.3), (0.4, 0.8), (3.0, -6.0)])
def test_the_fit_recovers_known_platt_parameters(a, b):
    x, y = _synthetic(a, b, 40_000)
    fitted = fit_platt(x, y)
    assert fitted.a == pytest.approx(a, rel=0.06) and fitted.b == pytest.approx(b, rel=0.06, abs=0.1)


def test_the_fit_is_the_maximum_likelihood_and_the_map_is_increasing():
    x, y = _synthetic(1.2, -1.0, 5_000, seed=3)
    fitted = fit_platt(x, y)

    def nll(a: float, b: float) -> float:
        z = a * x + b
        return float(np.sum(np.logaddexp(0, z) - y * z))

    best = nll(fitted.a, fitted.b)
    for da, db in [(0.01, 0), (-0.01, 0), (0, 0.01), (0, -0.01)]:
        assert nll(fitted.a + da, fitted.b + db) > best
    grid = np.linspace(-30, 30, 2001)
    assert np.all(np.diff(fitted(grid)) >= 0) and fitted(grid)[0] < fitted(grid)[-1]


def test_the_fit_refuses_what_it_cannot_calibrate():
    with pytest.raises(ExportError, match="relevant and irrelevant"):
        fit_platt([0.1, 0.2, 0.3], [0, 0, 0])
    with pytest.raises(ExportError, match="not increasing"):
        fit_platt(*(-v if i == 0 else v for i, v in enumerate(_synthetic(2.0, 0.0, 2_000))))
    with pytest.raises(ExportError, match="finite"):
        fit_platt([0.0, np.inf], [0, 1])


def test_equal_mass_bins_ece_and_brier():
    probs = np.array([0.1, 0.1, 0.2, 0.2, 0.8, 0.9])
    labels = np.array([0, 0, 1, 0, 1, 1])
    table = reliability(probs, labels, bins=3)
    assert [b.pairs for b in table] == [2, 2, 2]
    assert [b.predicted for b in table] == pytest.approx([0.1, 0.2, 0.85])
    assert [b.observed for b in table] == pytest.approx([0.0, 0.5, 1.0])
    assert ece(table) == pytest.approx((0.1 + 0.3 + 0.15) / 3)
    assert brier(probs, labels) == pytest.approx(np.mean((probs - labels) ** 2))
    # A calibrated predictor's ECE is only sampling noise; a shifted one's is the shift.
    x, y = _synthetic(1.0, 0.0, 50_000, seed=5)
    good = Platt(1.0, 0.0)(x)
    assert ece(reliability(good, y, BINS)) < 0.01
    assert ece(reliability(np.clip(good + 0.1, 0, 1), y, BINS)) > 0.08


def test_the_beir_reader_labels_candidates_and_subsamples_as_a_prefix(tmp_path):
    folder = write_beir(tmp_path / "set", queries=10, candidates=5)
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\r\nq0\td0-1\t2\r\nq0\td0-2\t0\r\nq1\td1-4\t1\r\nq2\td2-0\t1\r\n"
        + "".join(f"q{q}\td{q}-0\t1\r\n" for q in range(3, 9))  # q9 unjudged: left out
    )
    queries = read_beir(folder)
    assert [q.query_id for q in queries] == [f"q{i}" for i in range(9)]
    q0 = queries[0]
    assert q0.labels == (0, 1, 0, 0, 0) and q0.data == "set"  # 2 is relevant, 0 is judged irrelevant
    assert q0.documents[0].startswith("t0 ")  # title + " " + text, as BEIR joins them
    small, large = read_beir(folder, max_queries=3), read_beir(folder, max_queries=6)
    assert len(small) == 3 and {q.query_id for q in small} < {q.query_id for q in large}
    fit, held = split_queries(queries + read_beir(folder, max_queries=4))
    assert len(fit) + len(held) == 13 and split_queries(queries) == split_queries(queries)


def test_without_a_run_file_the_candidates_are_the_judged_plus_random_documents(tmp_path):
    folder = write_beir(tmp_path / "norun", queries=3, candidates=40, run=False)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1-3\t1\nq1\td0-5\t0\n")
    [q1] = read_beir(folder)
    assert len(q1.documents) == 100 and q1.labels[0] == 1 and sum(q1.labels) == 1


def test_a_folder_that_is_not_beir_is_an_export_error(tmp_path):
    with pytest.raises(ExportError, match="not a BEIR folder"):
        read_beir(tmp_path)


def test_calibration_writes_each_precisions_map_and_held_out_figures(tiny_model_repository, tmp_path):
    repo = calibrated_repository(tiny_model_repository, tmp_path / "repo", tmp_path / "data")
    entry = json.loads((repo / "reranker" / "manifest.json").read_text())["score_calibration"]
    assert entry["method"] == "platt" and set(entry["variants"]) == {"int8", "fp32"}
    assert [d["name"] for d in entry["data"]] == ["alpha", "beta"]
    assert entry["queries"] == {"fitted": 7, "held_out": 7}  # a seeded half of each folder
    assert entry["pairs"]["fitted"] + entry["pairs"]["held_out"] == 14 * 20
    for precision, v in entry["variants"].items():
        assert v["a"] > 0, precision
        held = v["held_out"]
        assert held["pairs"] == entry["pairs"]["held_out"] and set(held["by_data"]) == {"alpha", "beta"}
        assert sum(b["pairs"] for b in held["reliability_after"]) == held["pairs"]
        assert 0 <= held["ece_after"] <= 1 and 0 <= held["brier_after"] <= 1
    assert entry["variants"]["int8"]["scored_variant"] == "int8"
    assert entry["variants"]["fp32"]["scored_variant"] in ("fp32-opt", "fp32")
    assert entry["plot"] and (repo / "reranker" / entry["plot"]).stat().st_size > 1000
    spec = read_model_spec(repo, "reranker")  # the gateway reads what the exporter wrote
    assert spec.score_calibration is not None
    assert spec.score_calibration.map_for("int8").a == entry["variants"]["int8"]["a"]
    assert spec.score_calibration.queries_held_out == 7


def test_the_standalone_cli_calibrates_an_exported_repository(tiny_model_repository, tmp_path, capsys):
    repo = copy_repository(tiny_model_repository, tmp_path / "repo")
    folder = labelled_folder(repo, "prefilter", tmp_path / "data" / "gamma", queries=8, seed=4)
    cache = tmp_path / "logits"
    argv = ["--repository", str(repo), "--name", "prefilter", "--max-length", "128"]
    assert main([*argv, "--logits-cache", str(cache), str(folder)]) == 0
    assert "prefilter score calibration" in capsys.readouterr().err
    entry = json.loads((repo / "prefilter" / "manifest.json").read_text())["score_calibration"]
    assert entry["max_length"] == 128 and len(list(cache.glob("*.jsonl"))) == 2  # int8 and fp32 logits
    assert main([*argv, "--logits-cache", str(cache), str(folder)]) == 0  # from the cache: same map
    again = json.loads((repo / "prefilter" / "manifest.json").read_text())["score_calibration"]
    assert again["variants"] == entry["variants"]
    assert main(["--repository", str(repo), "--name", "missing", str(folder)]) == 1
    assert "score calibration failed" in capsys.readouterr().err


def test_the_export_flag_is_repeatable_and_calibrates_the_exported_models(monkeypatch, tmp_path):
    import export
    import export.score_calibration as sc
    from export.__main__ import main as export_main

    args = parse_args(
        ["--score-calibration", "a", "--score-calibration", "b", "--score-calibration-queries", "5"]
    )
    assert [str(p) for p in args.score_calibration] == ["a", "b"] and args.score_calibration_queries == 5
    assert parse_args([]).score_calibration == []
    (tmp_path / "out" / "prefilter").mkdir(parents=True)
    (tmp_path / "out" / "prefilter" / "manifest.json").write_text("{}")
    monkeypatch.setattr(export, "build_repository", lambda *a, **k: {})
    calls = []

    def fake(repository, name, folders, **options):
        calls.append((name, [str(f) for f in folders], options["max_queries"], options["max_length"]))
        return {"queries": {"fitted": 1, "held_out": 1}, "variants": {}}

    monkeypatch.setattr(sc, "calibrate_scores", fake)
    argv = [
        "--output",
        str(tmp_path / "out"),
        "--score-calibration",
        "a",
        "--score-calibration",
        "b",
        "--quiet",
    ]
    assert export_main([*argv, "--score-calibration-queries", "5"]) == 0
    # The cross-encoder at its own length, the prefilter at the gateway's prefilter length.
    assert calls == [("reranker", ["a", "b"], 5, None), ("prefilter", ["a", "b"], 5, 128)]
