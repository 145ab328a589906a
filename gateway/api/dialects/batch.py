"""Multi-query batch: `POST /v1/rerank/batch` (also `/rerank/batch`), several queries in one call.

Body: a list of `{query, documents, top_n}` items, bare or as `{"queries": [...]}` with shared defaults
(`top_n`, `return_documents`, `max_chunks_per_doc`, `rank_fields`). Every item is one `RerankQuery`;
all of them go to the executor in one call, so their pairs are batched together. Each item takes the
Cohere v1 item's fields and aliases (`texts`/`passages`, `top_k`, `return_text`).

Response: `{id, model, results: [{index, results: [{index, relevance_score, document?, chunk?}],
warnings?}], usage: {prompt_tokens, total_tokens}, meta: {billed_units: {search_units}}}`; the outer
`index` is the item's position in the request. Errors are the gateway's `{"error", "error_type"}`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.api.dialects.cohere import ALIASES, Document
from gateway.api.dialects.common import (
    apply_aliases,
    check_max_chunks,
    check_top_n,
    chunk_span,
    dialect_route_class,
    document_text,
    new_id,
    run_queries,
    search_units,
    truncation_warnings,
)
from gateway.domain import RerankOutcome, RerankQuery
from gateway.errors import ValidationFailed

MAX_QUERIES = 64


class BatchItem(BaseModel):
    model_config = ConfigDict(extra="ignore")

    query: str
    documents: list[Document]
    top_n: int | None = None
    rank_fields: list[str] | None = None
    return_documents: bool | None = None
    max_chunks_per_doc: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        return apply_aliases(data, ALIASES)


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    queries: list[BatchItem] = Field(min_length=1)
    top_n: int | None = None
    rank_fields: list[str] | None = None
    return_documents: bool = False
    max_chunks_per_doc: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, data: Any) -> Any:
        if isinstance(data, list):
            return {"queries": data}
        return apply_aliases(data, {"queries": ("requests", "inputs"), "top_n": ("top_k",)})


def render_error(status: int, error_type: str, message: str) -> dict[str, Any]:
    return {"error": message, "error_type": error_type}


BatchRoute = dialect_route_class(render_error)


def to_queries(req: BatchRequest) -> list[RerankQuery]:
    if len(req.queries) > MAX_QUERIES:
        raise ValidationFailed(f"at most {MAX_QUERIES} queries per batch, got {len(req.queries)}")
    queries = []
    for qi, item in enumerate(req.queries):
        fields = item.rank_fields if item.rank_fields is not None else req.rank_fields
        texts = tuple(
            document_text(doc, fields, where=f"queries[{qi}].documents[{di}]")
            for di, doc in enumerate(item.documents)
        )
        if not texts:
            raise ValidationFailed(f"queries[{qi}].documents must not be empty")
        queries.append(
            RerankQuery(
                query=item.query,
                documents=texts,
                top_n=check_top_n(
                    item.top_n if item.top_n is not None else req.top_n, field=f"queries[{qi}].top_n"
                ),
                max_chunks_per_doc=check_max_chunks(
                    item.max_chunks_per_doc
                    if item.max_chunks_per_doc is not None
                    else req.max_chunks_per_doc,
                    field=f"queries[{qi}].max_chunks_per_doc",
                ),
            )
        )
    return queries


def render(req: BatchRequest, outcomes: list[RerankOutcome]) -> dict[str, Any]:
    entries = []
    for qi, (item, outcome) in enumerate(zip(req.queries, outcomes, strict=True)):
        return_documents = req.return_documents if item.return_documents is None else item.return_documents
        results = []
        for scored in outcome.results:
            entry: dict[str, Any] = {"index": scored.index, "relevance_score": scored.relevance_score}
            if return_documents:
                original = item.documents[scored.index]
                entry["document"] = {"text": original} if isinstance(original, str) else original
            span = chunk_span(scored.chunk)
            if span is not None:
                entry["chunk"] = span
            results.append(entry)
        block: dict[str, Any] = {"index": qi, "results": results}
        warnings = truncation_warnings(outcome)
        if warnings:
            block["warnings"] = warnings
        entries.append(block)
    tokens = sum(o.prompt_tokens for o in outcomes)
    return {
        "id": new_id(),
        "model": outcomes[0].model,
        "results": entries,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "meta": {"billed_units": {"search_units": sum(search_units(len(i.documents)) for i in req.queries)}},
    }


router = APIRouter(route_class=BatchRoute, tags=["batch"])


@router.post("/v1/rerank/batch", summary="Several rerank queries in one call, scored together")
@router.post("/rerank/batch", include_in_schema=False)
async def rerank_batch(request: Request, body: BatchRequest = Body(...)) -> dict[str, Any]:  # noqa: B008
    outcomes = await run_queries(request, to_queries(body))
    return render(body, outcomes)
