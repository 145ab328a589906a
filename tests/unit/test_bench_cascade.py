"""bench.cascade's offline evaluation on synthetic scores: the rules, the fidelity and the report."""

from __future__ import annotations

import random

from bench import cascade as bc


def _records(queries: int = 6, n: int = 100, seed: int = 0):
    """Input order is good (relevant documents early); the prefilter is noise; the cross-encoder is right."""
    rng = random.Random(seed)
    recs, qrels = [], {}
    for q in range(queries):
        ids = [f"q{q}d{i}" for i in range(n)]
        relevant = set(rng.sample(range(15), 3))
        ce = [(5.0 if i in relevant else 0.0) + rng.random() for i in range(n)]
        pre = [rng.random() for _ in range(n)]
        recs.append(
            {
                "query_id": f"q{q}",
                "doc_ids": ids,
                "ce": ce,
                "pre": pre,
                "ce_s": [0.01] * n,
                "pre_s": [0.001] * n,
            }
        )
        qrels[f"q{q}"] = {ids[i]: 1 for i in relevant}
    return recs, qrels


def test_cells_rank_rules_by_what_they_keep_and_time_what_they_score(tmp_path):
    recs, qrels = _records()
    scored = {"scifact": recs, "nfcorpus": recs}
    cells = bc.evaluate_cells(scored, {"scifact": qrels, "nfcorpus": qrels})
    single = cells[0]
    by = {(c.rule, c.keep): c for c in cells}
    assert single.keep == 0 and single.ndcg["scifact"] == 1.0 and single.recall_vs_single["scifact"] == 1.0
    # The input order holds every relevant document in its first 20: input keep 20 loses nothing.
    assert by[("input", 20)].ndcg["scifact"] == 1.0 and bc.meets(by[("input", 20)], single)
    # A noise prefilter at keep 10 cuts most relevant documents.
    assert by[("prefilter", 10)].ndcg["scifact"] < 0.6 and not bc.meets(by[("prefilter", 10)], single)
    # docs/s: 100 prefilter calls (0.1 s) + k cross-encoder calls, against 100 cross-encoder calls (1 s).
    assert abs(by[("input", 10)].docs_per_s - 100 / 0.2) < 1e-6 and abs(single.docs_per_s - 100) < 1e-6
    target = bc.safe_recall(cells, ("input", "union", "rrf"))
    best = bc.recommend(cells, target, ("input", "union", "rrf"))
    assert best.keep and bc.meets(best, single) and min(best.recall_vs_single.values()) >= target

    results = {"machine": "test", "threads": 1, "default": bc.shipped_default(), "sets": []}
    path = bc.write_report(results, cells, tmp_path)
    text = path.read_text()
    assert "| single stage" in text and "(default)" in text and (tmp_path / "cascade.png").stat().st_size > 0
