"""Stand-ins for the dialect unit tests: an executor that scores by shared words, so rankings are
predictable, and that records every call, so tests see how a wire body became RerankQuery objects."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from gateway.domain import RerankOutcome, RerankQuery, ScoredDocument
from gateway.errors import RerankError

DOCS = [
    "the cat sat on the mat",
    "paris is the capital of france",
    "bananas are yellow",
]
QUERY = "what is the capital of france"


def overlap_outcome(q: RerankQuery) -> RerankOutcome:
    words = set(q.query.lower().split())
    scored = []
    for i, doc in enumerate(q.documents):
        logit = float(len(words & set(doc.lower().split()))) - 1.0
        scored.append(ScoredDocument(i, logit, 1.0 / (1.0 + math.exp(-logit)), "reranker"))
    scored.sort(key=lambda s: -s.relevance_score)
    if q.top_n is not None:
        scored = scored[: q.top_n]
    tokens = sum(len(q.query.split()) + len(d.split()) + 3 for d in q.documents)
    return RerankOutcome(
        results=tuple(scored),
        model="overlap-model",
        backend="fake",
        stages=("reranker",),
        top_n_applied=q.top_n is not None,
        prompt_tokens=tokens,
    )


class FakeExecutor:
    def __init__(self) -> None:
        self.calls: list[list[RerankQuery]] = []
        self.error: RerankError | None = None
        self.outcome_override: Any = None

    async def run(self, queries: Sequence[RerankQuery]) -> list[RerankOutcome]:
        self.calls.append(list(queries))
        if self.error is not None:
            raise self.error
        if self.outcome_override is not None:
            return [self.outcome_override(q) for q in queries]
        return [overlap_outcome(q) for q in queries]
