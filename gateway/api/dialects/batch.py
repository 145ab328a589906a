"""Multi-query batch: `POST /v1/rerank/batch` (also `/rerank/batch`), several queries in one call.

Body: a list of `{query, documents, top_n}` items, bare or as `{"queries": [...]}` with shared defaults
(`top_n`, `return_documents`, `max_chunks_per_doc`, `rank_fields`). Every item is one `RerankQuery`;
all of them go to admission control in one call, so their pairs are batched together. Each item takes the
Cohere v1 item's fields and aliases (`texts`/`passages`, `top_k`, `return_text`).

Response: `{id, model, results: [{index, results: [{index, relevance_score, document?, chunk?}],
warnings?}], usage: {prompt_tokens, total_tokens}, meta: {billed_units: {search_units}}}`; the outer
`index` is the item's position in the request. Errors are the gateway's `{"error", "error_type"}`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.api.deps import InferenceDep
from gateway.api.dialects.cohere import ALIASES, BilledUnits, Document, ranked_item
from gateway.api.dialects.common import (
    apply_aliases,
    dialect_route_class,
    document_text,
    new_id,
    search_units,
    truncation_warnings,
)
from gateway.api.errors import ErrorBody, ErrorStyle, body_responses, merge_responses
from gateway.api.schemas import (
    MAX_BATCH_QUERIES,
    RankedItem,
    Usage,
    calibrated_field,
    max_chunks_of,
    require_documents,
    top_n_of,
)
from gateway.domain import RerankOutcome, RerankQuery
from gateway.errors import RerankError, ValidationFailed


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
    calibrated: bool = calibrated_field()

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, data: Any) -> Any:
        if isinstance(data, list):
            return {"queries": data}
        return apply_aliases(data, {"queries": ("requests", "inputs"), "top_n": ("top_k",)})


class BatchEntry(BaseModel):
    index: int = Field(..., description="The item's position in the request.")
    results: list[RankedItem]
    warnings: list[str] | None = None


class BatchMeta(BaseModel):
    billed_units: BilledUnits


class BatchResponse(BaseModel):
    id: str
    model: str
    results: list[BatchEntry]
    usage: Usage
    meta: BatchMeta


def render_error(status: int, exc: RerankError) -> dict[str, Any]:
    return {"error": exc.message, "error_type": exc.error_type}


STYLE = ErrorStyle("batch", render_error, ErrorBody)
BatchRoute = dialect_route_class(STYLE)


def to_queries(req: BatchRequest) -> list[RerankQuery]:
    if len(req.queries) > MAX_BATCH_QUERIES:
        raise ValidationFailed(f"at most {MAX_BATCH_QUERIES} queries per batch, got {len(req.queries)}")
    queries = []
    for qi, item in enumerate(req.queries):
        fields = item.rank_fields if item.rank_fields is not None else req.rank_fields
        texts = tuple(
            document_text(doc, fields, where=f"queries[{qi}].documents[{di}]")
            for di, doc in enumerate(item.documents)
        )
        require_documents(texts, f"queries[{qi}].documents must not be empty")
        queries.append(
            RerankQuery(
                query=item.query,
                documents=texts,
                top_n=top_n_of(
                    item.top_n if item.top_n is not None else req.top_n, field=f"queries[{qi}].top_n"
                ),
                max_chunks_per_doc=max_chunks_of(
                    item.max_chunks_per_doc
                    if item.max_chunks_per_doc is not None
                    else req.max_chunks_per_doc,
                    field=f"queries[{qi}].max_chunks_per_doc",
                ),
                calibrated=req.calibrated,
            )
        )
    return queries


def render(req: BatchRequest, outcomes: list[RerankOutcome]) -> BatchResponse:
    """Rendered with exclude_unset: `warnings`, `document` and `chunk` appear only where they apply."""
    entries = []
    for qi, (item, outcome) in enumerate(zip(req.queries, outcomes, strict=True)):
        return_documents = req.return_documents if item.return_documents is None else item.return_documents
        results = [ranked_item(scored, item.documents, return_documents) for scored in outcome.results]
        warnings = truncation_warnings(outcome)
        entries.append(BatchEntry(index=qi, results=results, **({"warnings": warnings} if warnings else {})))
    units = sum(search_units(len(i.documents)) for i in req.queries)
    return BatchResponse(
        id=new_id(),
        model=outcomes[0].model,
        results=entries,
        usage=Usage.of(sum(o.prompt_tokens for o in outcomes)),
        meta=BatchMeta(billed_units=BilledUnits(search_units=units)),
    )


router = APIRouter(route_class=BatchRoute, tags=["batch"])
ROUTE: dict[str, Any] = {
    "response_model": BatchResponse,
    "response_model_exclude_unset": True,
    "responses": merge_responses(STYLE.responses(), body_responses()),
}


@router.post("/v1/rerank/batch", summary="Several rerank queries in one call, scored together", **ROUTE)
@router.post("/rerank/batch", include_in_schema=False, **ROUTE)
async def rerank_batch(body: Annotated[BatchRequest, Body()], inference: InferenceDep) -> BatchResponse:
    outcomes = await inference.run(to_queries(body), model=body.model)
    return render(body, outcomes)
