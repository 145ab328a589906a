"""Cohere rerank: v2 (`POST /v2/rerank`) and v1 / Jina (`POST /v1/rerank`).

Field names are Cohere's (cohere SDK 5.x `RerankResponse`, `V2RerankResponse`, `ApiMeta`). The
responses also carry `model` and `usage` {prompt_tokens, total_tokens}, so Jina's and vLLM's clients,
which post the same body to the same paths, find what they read. Errors are Cohere's `{"message"}`
with 400 for a bad request.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import ConfigDict, Field, model_validator

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
from gateway.api.schemas import PipelineOptions
from gateway.domain import RerankOutcome, RerankQuery
from gateway.errors import ValidationFailed

# Fields a neighbour dialect's client sends for the same thing.
ALIASES = {
    "documents": ("texts", "passages"),
    "top_n": ("top_k",),
    "return_documents": ("return_text",),
}

Document = str | dict[str, Any]


class CohereRerankRequest(PipelineOptions):
    """The body of `POST /v1/rerank` and `POST /v2/rerank` (a superset of both versions and Jina's),
    plus the gateway's per-request pipeline knobs (`keep`, `max_length`, `truncate`, ...)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    query: str
    documents: list[Document]
    top_n: int | None = None
    rank_fields: list[str] | None = None
    return_documents: bool | None = None
    max_tokens_per_doc: int | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        return apply_aliases(data, ALIASES)


def render_error(status: int, error_type: str, message: str) -> dict[str, Any]:
    return {"message": message}


# Cohere answers a malformed or out-of-range request with 400 (the SDK's BadRequestError).
STATUS_OVERRIDES = {"validation": 400, "limit_exceeded": 400}
CohereRoute = dialect_route_class(render_error, status_overrides=STATUS_OVERRIDES)


def to_query(req: CohereRerankRequest) -> RerankQuery:
    """The pipeline's query for one Cohere body (object documents ranked on `text` or `rank_fields`)."""
    texts = tuple(
        document_text(doc, req.rank_fields, where=f"documents[{i}]") for i, doc in enumerate(req.documents)
    )
    if not texts:
        raise ValidationFailed("documents must not be empty")
    return RerankQuery(
        query=req.query,
        documents=texts,
        top_n=check_top_n(req.top_n),
        keep=req.keep,
        ranked_input=req.ranked_input,
        max_length=req.max_length,
        max_chunks_per_doc=check_max_chunks(req.max_chunks_per_doc),
        truncate=req.truncate,
        truncation_direction=req.truncation_direction,
    )


def render(
    req: CohereRerankRequest,
    outcome: RerankOutcome,
    *,
    version: Literal["1", "2"],
    default_return_documents: bool,
) -> dict[str, Any]:
    """Cohere's response, plus `model` and `usage` for Jina/vLLM clients and `chunk` for chunked hits."""
    return_documents = default_return_documents if req.return_documents is None else req.return_documents
    results = []
    for scored in outcome.results:
        item: dict[str, Any] = {"index": scored.index, "relevance_score": scored.relevance_score}
        if return_documents:
            original = req.documents[scored.index]
            item["document"] = {"text": original} if isinstance(original, str) else original
        span = chunk_span(scored.chunk)
        if span is not None:
            item["chunk"] = span
        results.append(item)
    warnings = truncation_warnings(outcome)
    if req.max_tokens_per_doc is not None:
        warnings.append(
            f"max_tokens_per_doc={req.max_tokens_per_doc} is not applied separately: documents are cut to "
            "the model's window beside the query"
        )
    meta: dict[str, Any] = {
        "api_version": {"version": version},
        "billed_units": {"search_units": search_units(len(req.documents))},
        "tokens": {"input_tokens": outcome.prompt_tokens, "output_tokens": 0},
    }
    if warnings:
        meta["warnings"] = warnings
    return {
        "id": new_id(),
        "results": results,
        "meta": meta,
        "model": outcome.model,
        "backend": outcome.backend,
        "stages": list(outcome.stages),
        "usage": {"prompt_tokens": outcome.prompt_tokens, "total_tokens": outcome.prompt_tokens},
    }


async def rerank(
    request: Request, req: CohereRerankRequest, *, version: Literal["1", "2"], default_return_documents: bool
) -> dict[str, Any]:
    [outcome] = await run_queries(request, [to_query(req)])
    return render(req, outcome, version=version, default_return_documents=default_return_documents)


router = APIRouter(route_class=CohereRoute, tags=["cohere"])


@router.post("/v2/rerank", summary="Cohere v2 rerank")
async def rerank_v2(request: Request, body: CohereRerankRequest) -> dict[str, Any]:
    """Cohere v2: `{id, results: [{index, relevance_score}], meta}`; documents only if asked for."""
    return await rerank(request, body, version="2", default_return_documents=False)


@router.post("/v1/rerank", summary="Cohere v1 / Jina rerank")
async def rerank_v1(request: Request, body: CohereRerankRequest) -> dict[str, Any]:
    """Cohere v1 / Jina: documents as strings or objects, `rank_fields`, `return_documents` (default
    false, as Cohere's), `max_chunks_per_doc`."""
    return await rerank(request, body, version="1", default_return_documents=False)
