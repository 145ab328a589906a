"""Stand-ins for the dialect unit tests: an executor that scores by shared words, so rankings are
predictable, and that records every call (and the pipeline it was given), so tests see how a wire body became
RerankQuery objects and which served model ran them; and an app of the dialect routes around it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI

from gateway.api import routes_native
from gateway.api.app import add_error_handlers
from gateway.api.deps import Services, bind
from gateway.api.dialects import include_dialects
from gateway.domain import RerankOutcome, RerankQuery, ScoredDocument
from gateway.errors import RerankError
from gateway.registry import ModelDescription, ServedModel, ServedModels

DOCS = [
    "the cat sat on the mat",
    "paris is the capital of france",
    "bananas are yellow",
]
QUERY = "what is the capital of france"


def overlap_outcome(q: RerankQuery, model: str = "overlap-model") -> RerankOutcome:
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
        model=model,
        backend="fake",
        stages=("reranker",),
        top_n_applied=q.top_n is not None,
        prompt_tokens=tokens,
    )


class FakePipeline:
    """A served model's pipeline as the dialects see it: only handed on to admission control."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.models = None

    def __repr__(self) -> str:
        return f"FakePipeline({self.model_id!r})"


class FakeExecutor:
    """Admission control's stand-in: `pipelines` records the pipeline each call was given."""

    def __init__(self) -> None:
        self.calls: list[list[RerankQuery]] = []
        self.pipelines: list[Any] = []
        self.error: RerankError | None = None
        self.outcome_override: Any = None

    async def run(self, queries: Sequence[RerankQuery], reranker: Any = None) -> list[RerankOutcome]:
        self.calls.append(list(queries))
        self.pipelines.append(reranker)
        if self.error is not None:
            raise self.error
        if self.outcome_override is not None:
            return [self.outcome_override(q) for q in queries]
        model = getattr(reranker, "model_id", "overlap-model")
        return [overlap_outcome(q, model) for q in queries]


def served(pipeline: FakePipeline, *aliases: str, **described: Any) -> ServedModel[Any]:
    """A served model named by its pipeline's id, described as `described` says."""
    return ServedModel(
        pipeline.model_id,
        pipeline,
        aliases=aliases,
        describe=lambda: ModelDescription(pipeline.model_id, **described),
    )


def dialect_app(
    executor: FakeExecutor, models: Sequence[ServedModel[Any]] | None = None, api_keys: Sequence[str] = ()
) -> FastAPI:
    """The native route (with the app's native error handlers) and every dialect, over `executor` and
    `models` (default: one, "overlap-model")."""
    app = FastAPI()
    models = models or [served(FakePipeline("overlap-model"), max_tokens_per_pair=512)]
    bind(app, Services(models=ServedModels(models), admission=executor, api_keys=tuple(api_keys)))
    add_error_handlers(app)
    app.include_router(routes_native.router)
    include_dialects(app)
    return app
