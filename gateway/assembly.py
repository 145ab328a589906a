"""The last step: a plan's scores turned into its ranking (scores, sort, top_n, warnings, usage)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from gateway.cache import CachedScore
from gateway.domain import RerankOutcome, ScoredDocument, Stage
from gateway.plan import RequestPlan


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """relevance_score: the logistic of the logit, computed in float32."""
    x = np.asarray(logits, dtype=np.float32)
    with np.errstate(over="ignore"):
        return (np.float32(1.0) / (np.float32(1.0) + np.exp(-x))).astype(np.float32)


ACTIVATIONS = {"sigmoid": sigmoid, "identity": lambda x: np.asarray(x, dtype=np.float32)}


@dataclass(frozen=True)
class StageScores:
    """What the stages found for one plan: the cross-encoder's scores of the survivors (by unique index),
    the prefilter's of every unique document (empty when it did not run), and who scored them."""

    reranker: Mapping[int, CachedScore]
    prefilter: Sequence[CachedScore]
    backend: str
    cache_hits: int
    query_truncated: bool


def assemble(
    plan: RequestPlan, scores: StageScores, *, model: str, activation: str = "sigmoid"
) -> RerankOutcome:
    """Rescored documents first (by cross-encoder score), then the ones the prefilter cut (by its score);
    `relevance_score` is the model's score activation of the logit, in float32."""
    q = plan.query
    n = len(q.documents)
    logits = np.empty(n, dtype=np.float32)
    rescored = np.zeros(n, dtype=bool)
    for i, u in enumerate(plan.doc_to_unique):
        score = scores.reranker.get(u)
        rescored[i] = score is not None
        logits[i] = score.logit if score is not None else scores.prefilter[u].logit
    probs = ACTIVATIONS[activation](logits)
    order = sorted(range(n), key=lambda i: (not rescored[i], -logits[i], i))
    top = order if q.top_n is None else order[: q.top_n]
    results = tuple(
        ScoredDocument(
            index=i,
            logit=float(logits[i]),
            relevance_score=float(probs[i]),
            stage="reranker" if rescored[i] else "prefilter",
            chunk=plan.shifted(i, scores.reranker[plan.doc_to_unique[i]].chunk) if rescored[i] else None,
        )
        for i in top
    )
    ce = list(scores.reranker.values())
    tokens = sum(sc.tokens for sc in ce) + sum(sc.tokens for sc in scores.prefilter)
    truncated = sum(1 for sc in ce if sc.truncated)
    stages: tuple[Stage, ...] = ()
    if n:
        stages = ("prefilter", "reranker") if plan.use_prefilter else ("reranker",)
    warnings = list(plan.notes)
    if scores.query_truncated:
        warnings.append("the query was truncated to fit max_length")
    if truncated:
        warnings.append(f"{truncated} document(s) were longer than the scored window(s) and were truncated")
    return RerankOutcome(
        results=results,
        model=model,
        backend=scores.backend,
        stages=stages,
        top_n_applied=q.top_n is not None and q.top_n < n,
        prompt_tokens=tokens,
        truncated_documents=truncated,
        cache_hits=scores.cache_hits,
        warnings=tuple(warnings),
    )
