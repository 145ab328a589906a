"""nDCG@10 and Recall@10 with pytrec_eval, mean over the judged queries (as ../shared/data/bm25_baseline.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytrec_eval

MEASURES = ("ndcg_cut.10", "recall.10")


def ranking_to_run(doc_ids: Sequence[str], order: Sequence[int]) -> dict[str, float]:
    """Turn a ranking (indices into doc_ids, best first) into scores pytrec_eval sorts the same way.

    Rank-derived scores, not the service's relevance scores: a two-stage ranking puts the documents the
    prefilter cut below the rescored ones, and only the order the service returned may be judged.
    """
    n = len(order)
    return {doc_ids[i]: float(n - rank) for rank, i in enumerate(order)}


def evaluate(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    """Mean nDCG@10 / Recall@10 over the queries of `run` that have judgements."""
    judged = {q: dict(qrels[q]) for q in run if q in qrels}
    evaluator = pytrec_eval.RelevanceEvaluator(judged, set(MEASURES))
    per_query = evaluator.evaluate({q: dict(run[q]) for q in judged})
    n = len(per_query)
    if n == 0:
        return {"ndcg@10": float("nan"), "recall@10": float("nan"), "queries": 0}
    return {
        "ndcg@10": sum(v["ndcg_cut_10"] for v in per_query.values()) / n,
        "recall@10": sum(v["recall_10"] for v in per_query.values()) / n,
        "queries": n,
    }
